"""The order/billing samples: an order API publishing ``OrderCreated`` and a billing worker."""
