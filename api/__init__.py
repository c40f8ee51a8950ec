"""The HTTP gateway: Quart app factory, bounds, routes, request parsing, web pages."""
