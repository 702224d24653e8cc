"""The shipped `shapes` model draws what it is told, through the exported graphs and the lean runtime.

ONNX Runtime's fp32 and fp16 graphs are held to the same 8/9 by the benchmark's quality rows
(tests/test_benchmarks.py); here, OpenVINO on the fp16 graphs, the path furthest from PyTorch."""

from sdrt.runtime import Pipeline
from sdrt.shapes import CHECKS, adherence, caption

STEPS, GUIDANCE = 25, 5.0


def test_prompt_adherence_on_openvino_fp16_graphs(export_dir):
    with Pipeline.load(export_dir("shapes", fp16=True), backend="openvino") as pipe:
        images = [
            pipe(caption(*triple), num_inference_steps=STEPS, guidance_scale=GUIDANCE, scheduler="dpm++2m", seed=1 + i).images[0]
            for i, triple in enumerate(CHECKS)
        ]
    right, details = adherence(images, CHECKS)
    wrong = [(d["expected"], d["read"]) for d in details if not d["right"]]
    # 8/9 with colour, shape and background all right (the shipped weights: 8/9 in fp32 and fp16; over
    # 36 seeds 31/36, the misses all shapes)
    assert right >= 8, f"{right}/9 right; wrong: {wrong}"


def test_shapes_export_is_small_and_native_64px(export_dir):
    from sdrt.manifest import load_manifest

    m = load_manifest(export_dir("shapes"))
    assert m.default_size == 64 and m.vae_scale_factor == 4 and m.source["model"] == "shapes"
