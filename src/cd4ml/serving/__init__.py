"""The serving gateway: app factory, model handles with hot reload, the web page."""
