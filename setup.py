from setuptools import find_packages, setup

setup(
    name="kgrow",
    version="0.1.0",
    description="Progressive training for Keras 3: grow, freeze, sparsify and sieve inside model.fit",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["kgrow", "kgrow.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.10,<4",
        "tensorflow-datasets>=4.9",
        # tensorflow-datasets 4.9.x imports it to download and prepare any
        # dataset but does not declare it.
        "importlib_resources>=5",
        "numpy>=1.26",
        "matplotlib>=3.8",
        "tensorboard>=2.21,<2.22",
    ],
    extras_require={"test": ["pytest>=8", "pytest-xdist>=3.5"]},
    entry_points={"console_scripts": ["kgrow=kgrow.cli:main"]},
)
