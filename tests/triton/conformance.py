"""Client conformance: the official tritonclient (HTTP and gRPC) against a running modelgate.

Run by tests/tritonclient.rs with the project's .venv (scripts/python-env.sh). For every route
given, in every mode given, it reads the model's metadata, sends rows of the breast-cancer
holdout (or the diabetes features), and compares every answer with Python onnxruntime running
the model file of the variant that answered (the response's model_version) to 1e-5.

Modes:
  json          inputs and outputs as JSON (binary_data=False)
  json-gzip     the same, request and response gzip-compressed
  json-deflate  the same, deflate
  default       the client's defaults: binary tensor data both ways
  default-gzip  defaults with gzip both ways
  mixed         one input as binary, outputs one binary and one JSON
  grpc          tritonclient.grpc with its defaults (raw tensor contents) on --grpc-url
  grpc-gzip     the same, request and response gzip-compressed
  grpc-stream   tritonclient.grpc's stream (ModelStreamInfer), one request per stream

Prints one line per call; exits non-zero on the first mismatch or error.
"""

import argparse
import json
import sys

import numpy as np
import onnxruntime as ort
import tritonclient.http as httpclient

ROWS = 8


def reference(model_path, feed):
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


def rows_for(meta, holdout, diabetes):
    (spec,) = meta["inputs"]
    width = int(spec["shape"][-1])
    dtype = {"FP32": np.float32, "FP64": np.float64}[spec["datatype"]]
    if width == 30:
        data = [s["features"] for s in holdout["samples"][:ROWS]]
    else:
        data = [diabetes[: width]] * ROWS
    return spec["name"], spec["datatype"], np.asarray(data, dtype=dtype)


def call_grpc(client, route, mode, name, datatype, x, outputs, headers):
    import tritonclient.grpc as grpcclient

    inp = grpcclient.InferInput(name, list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    requested = [grpcclient.InferRequestedOutput(o) for o in outputs]
    compression = "gzip" if mode.endswith("gzip") else None
    return client.infer(route, [inp], outputs=requested, headers=headers, compression_algorithm=compression)


def call_stream(client, route, name, datatype, x, outputs, headers):
    import queue

    import tritonclient.grpc as grpcclient

    inp = grpcclient.InferInput(name, list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    requested = [grpcclient.InferRequestedOutput(o) for o in outputs]
    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)), headers=headers)
    try:
        client.async_stream_infer(route, [inp], outputs=requested, request_id="stream-1")
        result, error = answers.get(timeout=30)
    finally:
        client.stop_stream()
    if error is not None:
        raise error
    assert result.get_response().id == "stream-1", result.get_response()
    return result


def call(client, route, mode, name, datatype, x, outputs, headers):
    if mode == "grpc-stream":
        return call_stream(client, route, name, datatype, x, outputs, headers)
    if mode.startswith("grpc"):
        return call_grpc(client, route, mode, name, datatype, x, outputs, headers)
    binary_in = mode.startswith("default") or mode == "mixed"
    inp = httpclient.InferInput(name, list(x.shape), datatype)
    inp.set_data_from_numpy(x, binary_data=binary_in)
    if mode.startswith("default"):
        requested = None  # the client's default: every output, binary
    else:
        binary_out = [mode == "mixed" and i == 0 for i in range(len(outputs))]
        requested = [httpclient.InferRequestedOutput(o, binary_data=b) for o, b in zip(outputs, binary_out)]
    compression = None
    for c in ("gzip", "deflate"):
        if mode.endswith(c):
            compression = c
    return client.infer(
        route,
        [inp],
        outputs=requested,
        headers=headers,
        request_compression_algorithm=compression,
        response_compression_algorithm=compression,
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--grpc-url", help="host:port of the gRPC listener, for the grpc modes")
    p.add_argument("--routes", required=True, help='JSON: {route: {variant: model file}}')
    p.add_argument("--modes", default="json")
    p.add_argument("--holdout", required=True)
    p.add_argument("--diabetes", required=True, help="JSON list: one row of diabetes features")
    p.add_argument("--header", action="append", default=[], help="name:value sent with every call")
    a = p.parse_args()
    routes = json.loads(a.routes)
    holdout = json.load(open(a.holdout))
    diabetes = json.loads(a.diabetes)
    headers = dict(h.split(":", 1) for h in a.header)
    http = httpclient.InferenceServerClient(url=a.url)
    grpc = None
    if any(m.startswith("grpc") for m in a.modes.split(",")):
        import tritonclient.grpc as grpcclient

        if not a.grpc_url:
            raise SystemExit("the grpc modes need --grpc-url")
        grpc = grpcclient.InferenceServerClient(url=a.grpc_url)
        assert grpc.is_server_live() and grpc.is_server_ready()
        assert grpc.get_server_metadata(as_json=True)["name"] == "modelgate"
    assert http.is_server_live() and http.is_server_ready()
    calls = 0
    for route, variants in routes.items():
        # Triton's model configuration extension: the same tensors, the batch dimension told.
        hmeta = http.get_model_metadata(route, headers=headers)
        config = http.get_model_config(route, headers=headers)
        assert config["name"] == route, config
        assert [i["name"] for i in config["input"]] == [i["name"] for i in hmeta["inputs"]], config
        assert [o["name"] for o in config["output"]] == [o["name"] for o in hmeta["outputs"]], config
        spec = hmeta["inputs"][0]
        if int(spec["shape"][0]) == -1 and config.get("max_batch_size", 0) > 0:
            assert [int(d) for d in config["input"][0]["dims"]] == [int(d) for d in spec["shape"][1:]], config
        if grpc is not None:
            # The same configuration over gRPC (routes forwarded to HTTP upstreams answer it over HTTP only).
            try:
                gconfig = grpc.get_model_config(route, headers=headers, as_json=True)["config"]
            except Exception as e:  # tritonclient raises its own exception type
                if "forwards to an HTTP upstream" not in str(e):
                    raise
            else:
                assert gconfig["name"] == route, gconfig
                assert int(gconfig.get("max_batch_size", 0)) == int(config.get("max_batch_size", 0)), (gconfig, config)
                assert [(i["name"], i["data_type"], [int(d) for d in i["dims"]]) for i in gconfig["input"]] == [
                    (i["name"], i["data_type"], [int(d) for d in i["dims"]]) for i in config["input"]
                ], (gconfig, config)
                gstats = grpc.get_inference_statistics(route, headers=headers, as_json=True)
                assert all(m["name"] == route for m in gstats["model_stats"]), gstats
                print(f"ok {route}: model config and statistics over gRPC match HTTP's", flush=True)
        stats = lambda: sum(int(m.get("inference_count", 0)) for m in http.get_inference_statistics(route, headers=headers).get("model_stats", []))
        before = stats()
        route_calls = 0
        for mode in a.modes.split(","):
            client = grpc if mode.startswith("grpc") else http
            assert client.is_model_ready(route, headers=headers), route
            if client is grpc:
                meta = client.get_model_metadata(route, headers=headers, as_json=True)
            else:
                meta = client.get_model_metadata(route, headers=headers)
            assert meta["name"] == route, f"metadata names {meta['name']!r}, asked for {route!r}"
            name, datatype, x = rows_for(meta, holdout, diabetes)
            outputs = [o["name"] for o in meta["outputs"]]
            for user in range(3):
                h = dict(headers, **{"x-user-id": f"user-{user}"})
                result = call(client, route, mode, name, datatype, x, outputs, h)
                response = result.get_response(as_json=True) if client is grpc else result.get_response()
                assert response["model_name"] == route, response
                variant = response.get("model_version")
                model = variants.get(variant)
                if model is None:
                    raise SystemExit(f"{route}: answered by {variant!r}, not one of {list(variants)}")
                want = reference(model, {name: x})
                for out in outputs:
                    got = result.as_numpy(out)
                    if got is None:
                        raise SystemExit(f"{route} [{mode}]: no output {out!r} in {response}")
                    exp = want[out]
                    if got.shape != exp.shape or not np.allclose(got, exp, rtol=1e-5, atol=1e-5):
                        raise SystemExit(f"{route} [{mode}] {variant}: {out} differs: {got.ravel()[:5]} vs {exp.ravel()[:5]}")
                calls += 1
                route_calls += 1
                print(f"ok {route} [{mode}] {variant}: {', '.join(outputs)} match onnxruntime", flush=True)
        # Triton's statistics extension counts what was answered (a forwarding route reports
        # what its upstream counted, which includes only the calls made through this route).
        after = stats()
        assert after - before >= route_calls, f"{route}: statistics counted {after - before} of {route_calls} calls"
        print(f"ok {route}: model config and statistics ({after - before} inferences counted)", flush=True)
    print(f"conformance: {calls} calls, every answer matched onnxruntime to 1e-5")


if __name__ == "__main__":
    sys.exit(main())
