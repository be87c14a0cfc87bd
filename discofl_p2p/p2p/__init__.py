"""The peer-to-peer model store: libp2p hosts with an asyncio face.

py-libp2p runs on trio; the rest of the project is asyncio. `bridge.py` is the one
module that imports trio: it runs every libp2p host of the process in one dedicated
trio thread and carries calls across. `node.py` is the asyncio API.
"""
