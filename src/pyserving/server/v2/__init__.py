"""The Open Inference Protocol ("V2": KServe, Triton) beside TF Serving's APIs.

* ``protos.py``: the gRPC messages of ``inference.proto`` (package ``inference``).
* ``codec.py``: V2 tensors (raw bytes, JSON data, typed contents) <-> NumPy, checked
  against a signature.
* ``service.py``: the transport-agnostic operations (health, metadata, inference,
  statistics, model repository) over :class:`~pyserving.server.service.ModelServing`, with
  V2's error mapping.
* ``rest.py``: the ``/v2/...`` routes of the REST port.
* ``grpc.py``: ``inference.GRPCInferenceService`` for every gRPC front end.
"""
