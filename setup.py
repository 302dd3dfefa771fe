"""quantens: ensembles of quantized neural networks with shared weights.

`install_requires` holds compatible ranges; the tested versions of the whole
stack are pinned in constraints.txt (`pip install -c constraints.txt .`).
Installed are the packages `quantens` and `zoo` and four commands:
quantens-train, quantens-export, quantens-report and quantens-evaluate
(the repository's train.py is a thin script for `python train.py`).
"""

from setuptools import find_packages, setup

setup(
    name="quantens",
    version="0.1.0",
    description=(
        "Train ensembles of quantized neural networks with shared weights using "
        "knowledge distillation (Keras/TensorFlow, larq)"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    license_files=["LICENSE"],
    keywords=[
        "quantization", "binary neural networks", "knowledge distillation", "ensembles",
        "larq", "keras", "tensorflow",
    ],
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Environment :: Console",
        "Intended Audience :: Science/Research",
        "Intended Audience :: Developers",
        "Operating System :: POSIX",  # fcntl locks the result directories
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    # no top-level modules: train.py stays a script of the repository
    packages=find_packages(include=["quantens", "quantens.*", "zoo", "zoo.*"]),
    package_data={"zoo": ["weights/*.h5", "weights/*.json"]},
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.21,<3",
        "tf-keras>=2.21,<3",  # its release pins the matching tensorflow minor
        "tensorboard>=2.21,<3",
        "larq>=0.14,<1",
        "larq-compute-engine>=0.16,<1",
        "tensorflow-datasets>=4.9,<5",
        # tensorflow-datasets imports it without declaring it
        "importlib_resources>=5",
        "keras-tuner>=1.4,<2",
        "scikit-learn>=1.3,<2",
        "numpy>=1.26,<2",
        "h5py>=3.11,<4",
        "matplotlib>=3.7,<4",
        "pillow>=10",
    ],
    extras_require={
        # LiteRT: member files are evaluated with its interpreter where it is installed
        # (tf.lite.Interpreter otherwise; quantens.export.runtime)
        "litert": ["ai-edge-litert>=2.3,<3"],
        # the tests run member files on LiteRT and, by switch, on tf.lite
        "test": ["pytest>=8", "pytest-xdist>=3.5", "ruff>=0.6", "ai-edge-litert>=2.3,<3"],
        # benchmarks only: TF Model Optimization's int8 model beside the members
        "bench": ["tensorflow-model-optimization>=0.8"],
        # the documentation site (`make docs`): mkdocs, the Material theme, API pages
        # generated from the docstrings
        "docs": ["mkdocs>=1.6,<2", "mkdocs-material>=9.5,<10", "mkdocstrings[python]>=0.27,<2"],
    },
    entry_points={
        "console_scripts": [
            "quantens-train=quantens.cli.train:main",
            "quantens-export=quantens.cli.export:main",
            "quantens-report=quantens.cli.report:main",
            "quantens-evaluate=zoo.evaluate:main",
        ]
    },
)
