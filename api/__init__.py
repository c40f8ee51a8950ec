"""The HTTP gateway: Flask app factory, routes, request parsing, web pages."""
