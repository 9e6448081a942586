"""The order service: ``POST /orders`` stores the order and publishes ``OrderCreated``;
``POST /orders/{order_id}/cancel`` publishes ``OrderCancelled`` in the same session."""

from samples.order_api.app import create_app

__all__ = ["create_app"]
