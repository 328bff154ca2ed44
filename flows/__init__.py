"""Prefect flows of mlex-tomo and the code that deploys them."""
