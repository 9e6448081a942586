"""The claim-check decisions, with no I/O, in the order an event meets them.

Publishing: :mod:`.entities` (which queue or topic a call means), :mod:`.publication` (the
serialized event, its id and properties, the route it takes), :mod:`.wire` (the wire contract:
sizes, property names and types), :mod:`.send_failures` (what a failed send is reported as).
Receiving: :mod:`.rehydration` (from a received message to a
plan: inline, or a payload URL checked by :mod:`.urls`, which confines it to trusted storage).
"""
