"""Pytest fixtures for claimcheck-bus users: Azurite and the Service Bus emulator."""
