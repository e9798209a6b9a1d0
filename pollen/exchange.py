"""Sending messages to clients and collecting their replies, on Flower's Grid.

``exchange`` is ``Grid.send_and_receive`` with two differences, both for deployments:

- It polls for replies every ``POLL_SECONDS`` (0.2 s). Flower 1.39's deployment grid
  (``flwr.superlink.grid.http_grid``) sleeps a fixed 3 s between pulls, so every message
  costs up to 3 s after its reply has arrived, twice a round (train and evaluate).
- A reply the SuperLink makes itself, because the node went away (``NODE_UNAVAILABLE``),
  comes from the SuperLink's node id, not the client's; it is re-addressed as a reply of
  the node the message was sent to (``Message(error, reply_to=sent)``), so that the
  failure is recorded against that client. Flower's strategies don't need that: they
  only count errors; Pollen keys everything by client.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

POLL_SECONDS = 0.2


def exchange(grid: Grid, messages: Iterable[Message], timeout: float,
             poll_seconds: float = POLL_SECONDS) -> list[Message]:
    """The replies that arrived within ``timeout`` seconds of sending, in the order their
    messages were sent (whatever the order of arrival: sums over replies are then
    reproducible)."""
    messages = list(messages)
    if not messages:
        return []
    deadline = time.monotonic() + timeout
    ids = list(grid.push_messages(messages))
    sent = {message_id: message for message_id, message in zip(ids, messages)
            if message_id is not None}  # None: Flower could not push it (logged there)
    order = {message_id: i for i, message_id in enumerate(sent)}
    pending, replies = set(sent), []
    while pending:
        for reply in grid.pull_messages([i for i in sent if i in pending]):
            question = sent[reply.metadata.reply_to_message_id]
            pending.discard(reply.metadata.reply_to_message_id)
            if reply.has_error() and reply.metadata.src_node_id != question.metadata.dst_node_id:
                reply = Message(reply.error, reply_to=question)
            replies.append(reply)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(min(poll_seconds, max(deadline - time.monotonic(), 0.0)))
    return sorted(replies, key=lambda reply: order[reply.metadata.reply_to_message_id])
