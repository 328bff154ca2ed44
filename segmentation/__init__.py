"""The ML segmentation job that runs in the container (issue 4); imports neither Prefect nor Dash."""
