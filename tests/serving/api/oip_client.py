"""Run by the tritonclient virtual environment (its own protobuf): Triton's stock gRPC client
against a Sightline server. Prints one JSON object of what it saw."""

import json
import sys

import numpy as np
import tritonclient.grpc as triton


def main(url: str, image_path: str) -> None:
    client = triton.InferenceServerClient(url)
    seen = {"live": client.is_server_live(), "ready": client.is_server_ready(),
            "model_ready": client.is_model_ready("gap"),
            "unknown_ready": client.is_model_ready("nope")}
    metadata = client.get_model_metadata("gap", as_json=True)
    seen["inputs"] = [(i["name"], i["datatype"]) for i in metadata["inputs"]]
    seen["server"] = client.get_server_metadata(as_json=True)["name"]

    encoded = np.array([open(image_path, "rb").read()] * 2, dtype=np.object_)
    image = triton.InferInput("image", [2], "BYTES")
    image.set_data_from_numpy(encoded)
    result = client.infer("gap", [image], request_id="oip-1")
    probabilities = result.as_numpy("probabilities")
    seen["bytes_shape"] = list(probabilities.shape)
    seen["bytes_sums"] = probabilities.sum(axis=1).tolist()
    seen["id"] = result.get_response().id

    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    tensor = triton.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    wanted = [triton.InferRequestedOutput("probabilities", class_count=2)]
    classes = client.infer("gap", [tensor], outputs=wanted).as_numpy("probabilities")
    seen["classification"] = [[c.decode() for c in row] for row in classes]

    floats = triton.InferInput("pixels", list(pixels.shape), "FP32")
    floats.set_data_from_numpy(pixels.astype(np.float32))
    heat = client.infer("gap", [floats], parameters={"cam_method": "gradcam"})
    seen["heatmap_shape"] = list(heat.as_numpy("heatmap").shape)
    seen["fp32_argmax"] = heat.as_numpy("probabilities").argmax(axis=1).tolist()

    try:
        bad = triton.InferInput("image", [1], "BYTES")
        bad.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
        client.infer("gap", [bad])
    except triton.InferenceServerException as exc:
        seen["bad_status"], seen["bad_message"] = exc.status(), exc.message()
    print(json.dumps(seen))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
