"""chatops-bridge: drive GitHub from Slack; the edges and the wiring."""
