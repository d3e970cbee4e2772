"""Socket.IO: authenticated per-user rooms, one publisher, missed-event replay."""
