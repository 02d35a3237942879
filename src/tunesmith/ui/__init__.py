"""`tunesmith ui`: the browser app over the registry, runs, reports, the serve engine, review and compare."""
