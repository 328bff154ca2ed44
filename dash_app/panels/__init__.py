"""One module per panel of the app, each with `layout(...)` and `register_callbacks(app, ...)`."""
