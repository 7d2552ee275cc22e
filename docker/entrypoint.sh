#!/bin/sh
# The image's entrypoint, as tensorflow/serving's: serve the model MODEL_NAME (default
# "model") found under MODEL_BASE_PATH (default /models; a directory, or s3://, gs://,
# az:// ...) on port 8500 (gRPC) and 8501 (REST). Extra arguments are passed on after these;
# a flag given twice takes its last value, so they may also change the ports or the model.
set -eu
model_name="${MODEL_NAME:-model}"
model_base_path="${MODEL_BASE_PATH:-/models}"
exec tensorflow_model_server \
    --port=8500 \
    --rest_api_port=8501 \
    --model_name="${model_name}" \
    --model_base_path="${model_base_path%/}/${model_name}" \
    "$@"
