"""quantens: ensembles of quantized neural networks with shared weights."""

from setuptools import setup

setup(
    name="quantens",
    version="0.1.0",
    description=(
        "Train ensembles of quantized neural networks with shared weights using "
        "knowledge distillation (Keras/TensorFlow, larq)"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=["quantens", "quantens.cli", "quantens.export", "quantens.report", "zoo"],
    py_modules=["train"],
    package_data={"zoo": ["weights/*.h5", "weights/*.json"]},
    python_requires=">=3.10",
    install_requires=[
        "tensorflow==2.21.*",
        "tf-keras==2.21.*",
        "larq==0.14.*",
        "larq-compute-engine==0.16.*",
        "tensorflow-datasets>=4.9,<5",
        # tensorflow-datasets imports it without declaring it
        "importlib_resources",
        "keras-tuner>=1.4,<2",
        "scikit-learn>=1.3",
        "numpy<2",
        "matplotlib>=3.7",
    ],
    extras_require={"test": ["pytest>=8", "ruff>=0.6"]},
    entry_points={"console_scripts": ["quantens-train=quantens.cli.train:main"]},
)
