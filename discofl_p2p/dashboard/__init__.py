"""A live dashboard for one task, read from the chain alone: `discofl-p2p dashboard`.

`reader.TaskReader` follows the task and builds snapshots; `server.make_app` serves
them as a page, a JSON API and a server-sent event stream (docs/dashboard.md).
"""
