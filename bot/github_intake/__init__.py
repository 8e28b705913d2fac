"""GitHub intake: the two ways GitHub events reach the bridge, both ending at Router.dispatch.

Webhook deliveries are checked here (`payloads`: depth and field types, pure) before bot/http.py
stores them; in poll mode (`poller`) what the bridge fetched is turned into the same events.
One package, so a change to what an event must look like is made next to both of its sources
(bot/http.py stays the ASGI edge: signatures, storage, answers).
"""
