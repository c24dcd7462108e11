"""Build of the compiled kernels (p2prec/model/_kernels.c); everything else is in pyproject.toml.

The extension is optional: where no C compiler is found the build warns and goes on, and the
store runs its numpy code instead (``p2prec.model.kernels.NATIVE`` says which).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "p2prec.model._kernels",
            sources=["p2prec/model/_kernels.c"],
            extra_compile_args=["-O3", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
