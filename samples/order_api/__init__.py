"""The order service: ``POST /orders`` stores the order and publishes ``OrderCreated``."""

from samples.order_api.app import create_app

__all__ = ["create_app"]
