"""Talk to gpulet with NVIDIA's reference OIP client, unchanged: `pip install 'tritonclient[http]'`.

    python benchmarks/triton_client.py --url 127.0.0.1:8000 [--model lenet]

Asks for liveness and readiness, server and model metadata and the Triton config, runs one
request with JSON tensors and one with binary tensors both ways, and shows two errors as
tritonclient raises them. Exits non-zero if gpulet answers anything unexpected.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException


def run(url: str, model: str) -> None:
    client = triton.InferenceServerClient(url=url)
    try:
        print(f"is_server_live: {client.is_server_live()}")
        print(f"is_server_ready: {client.is_server_ready()}")
        print(f"is_model_ready({model}): {client.is_model_ready(model)}")
        print(f"get_server_metadata: {json.dumps(client.get_server_metadata())}")
        meta = client.get_model_metadata(model)
        print(f"get_model_metadata({model}): {json.dumps(meta)}")
        config = client.get_model_config(model)
        print(
            f"get_model_config({model}): max_batch_size={config['max_batch_size']} "
            f"input={json.dumps(config['input'])}"
        )

        [spec] = meta["inputs"]
        [out] = meta["outputs"]
        shape = [2, *spec["shape"][1:]]  # a batch of 2 for the dynamic (-1) axis
        data = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        for binary in (False, True):
            tensor = triton.InferInput(spec["name"], shape, spec["datatype"])
            tensor.set_data_from_numpy(data, binary_data=binary)
            wanted = [triton.InferRequestedOutput(out["name"], binary_data=binary)]
            result = client.infer(
                model,
                [tensor],
                outputs=wanted,
                request_id=f"demo-{binary}",
                parameters={"slo_ms": 1000},
            )
            scores = result.as_numpy(out["name"])
            assert scores is not None
            answer = result.get_response()
            print(
                f"infer binary={binary}: id={answer['id']} shape={list(scores.shape)} "
                f"argmax={scores.argmax(axis=1).tolist()} parameters={answer['parameters']}"
            )

        bad = triton.InferInput(spec["name"], [1, 3], spec["datatype"])
        bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
        for name, inputs in ((model, [bad]), ("resnet1000", [bad])):
            try:
                client.infer(name, inputs)
                raise SystemExit(f"{name}: a bad request was answered 200")
            except InferenceServerException as exc:
                print(
                    f"infer({name}) -> InferenceServerException status={exc.status()}: "
                    f"{exc.message()}"
                )
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:8000", help="host:port, no scheme")
    parser.add_argument("--model", default="lenet", help="a served model with one FP32 input")
    args = parser.parse_args()
    run(args.url, args.model)


if __name__ == "__main__":
    main()
