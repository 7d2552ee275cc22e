"""The lifecycle core: Source -> Loader -> Manager -> ServableHandle.

Everything here is synchronous and thread-safe and never imports asyncio, grpc or tensorflow.
"""
