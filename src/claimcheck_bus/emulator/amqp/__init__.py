"""A small AMQP 1.0 toolkit for the emulator: types, codec, framing, performatives, sections.

Independent of the SDK's private `_pyamqp` (used only as a test oracle) and of the broker.
"""
