from pathlib import Path

from setuptools import find_packages, setup

version = next(
    line.split('"')[1] for line in Path("sdrt/__init__.py").read_text().splitlines() if line.startswith("__version__")
)

setup(
    name="sdrt",
    version=version,
    description="Optimized inference runtime for Stable Diffusion: ONNX export, TensorRT engines, a lean numpy runtime",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["sdrt", "sdrt.*"]),
    package_data={"sdrt": ["data/clip/*", "data/t5/*", "data/arch/*/*.json", "data/arch/*/*/*.json", "data/weights/*/*", "data/loras/*/*",
                           "data/controlnets/*/*/*", "serve/page/*"]},
    # The runtime: numpy + ONNX Runtime + tokenizers + Pillow (+ safetensors for LoRA files). Never torch.
    install_requires=[
        "numpy>=1.24",
        "onnxruntime>=1.17",
        "pillow>=10",
        "safetensors>=0.4",
        "tokenizers>=0.15",
        "tqdm>=4.60",
    ],
    extras_require={
        # torch is pinned to the CPU build that installs from a local wheel; an unpinned torch
        # would pull a multi-GB CUDA build.
        "export": [
            "torch==2.13.0",
            "diffusers>=0.30",
            "transformers>=4.40",
            "onnx>=1.16",
            "safetensors>=0.4",
        ],
        # the CPU fast path (backend="openvino"); NNCF compresses weights to int8 (openvino:int8)
        "openvino": ["openvino>=2024.0", "nncf>=2.14"],
        # TensorRT engines (sdrt build, backend="tensorrt-rtx"): TensorRT for RTX from PyPI (its builder needs no
        # GPU), cuda-python for device memory, onnx-graphsurgeon for the graph clean-up before a build
        "tensorrt-rtx": ["tensorrt-rtx-cu12>=1.4", "cuda-bindings>=12.8,<13", "onnx>=1.16", "onnx-graphsurgeon>=0.5"],
        # NVIDIA TensorRT 10+ (backend="tensorrt"): its libraries come from NVIDIA's index (pypi.nvidia.com)
        "tensorrt": ["tensorrt>=10.1", "cuda-bindings>=12.8", "onnx>=1.16", "onnx-graphsurgeon>=0.5"],
        # sdrt bench: the torch reference needs "export" too
        "bench": ["matplotlib>=3.7", "scikit-image>=0.21"],
        # ControlNet preprocessors (canny): OpenCV, as AUTOMATIC1111's ControlNet extension
        "controlnet": ["opencv-python-headless>=4.8"],
        # sdrt serve: AUTOMATIC1111's HTTP API (with its ControlNet extension's); ray: the same app as Ray Serve replicas
        "serve": ["fastapi>=0.110", "uvicorn>=0.27", "prometheus-client>=0.19", "opencv-python-headless>=4.8"],
        "ray": ["ray[serve]>=2.9", "fastapi>=0.110", "uvicorn>=0.27", "prometheus-client>=0.19"],
        # scipy: diffusers' LMS reference in the parity tests; webuiapi: the A1111 client the serve tests drive;
        # peft: diffusers' own LoRA loading, the reference for sdrt's
        "test": ["pytest>=7", "scipy>=1.10", "httpx>=0.25", "webuiapi>=0.9.17", "peft>=0.17", "selenium>=4.20"],
    },
    entry_points={"console_scripts": ["sdrt=sdrt.cli:main"]},
)
