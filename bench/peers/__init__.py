"""Peer servers the bench compares the gateway with: each echoes every message back to its sender,
and a message whose payload starts with `B` goes to every connected client (the fan-out probe).
Every peer prints `listening PORT` once it accepts connections."""
