"""`pip install .`: builds the module with the project's CMake build (build/, or $INFLAB_BUILD_DIR;
an existing build is reused, so this takes seconds after `./inflab setup`) and packages
build/python/inflab with libinflab and every plugin, so the installed package stands alone
(it needs Debian's libtorch-dev libraries, as the CLI does)."""

import glob
import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

ROOT = os.path.dirname(os.path.abspath(__file__))


class BuildWithCMake(build_py):
    def run(self):
        build = os.environ.get("INFLAB_BUILD_DIR", os.path.join(ROOT, "build"))
        if not os.path.exists(os.path.join(build, "CMakeCache.txt")):
            subprocess.check_call(["cmake", "-S", ROOT, "-B", build, "-DCMAKE_BUILD_TYPE=Release"])
        subprocess.check_call(["cmake", "--build", build, "--target", "inflab_python",
                               f"-j{os.cpu_count() or 2}"])
        package = os.path.join(build, "python", "inflab")
        modules = glob.glob(os.path.join(package, "_inflab*.so"))
        if not modules:
            raise SystemExit(f"{package}: no _inflab module after the build (is pybind11-dev installed?)")
        target = os.path.join(self.build_lib, "inflab")
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(os.path.join(target, "lib"))
        os.makedirs(os.path.join(target, "plugins"))
        for f in modules + [os.path.join(package, "__init__.py")]:
            shutil.copy2(f, target)
        # The library under its SONAME (the name the module and the plugins ask the loader for).
        for path in glob.glob(os.path.join(build, "lib", "libinflab.so.*")):
            name = os.path.basename(path)
            if name.split(".so.")[1].isdigit():  # libinflab.so.<ABI>, not libinflab.so.0.1.0
                shutil.copy2(os.path.realpath(path), os.path.join(target, "lib", name))
        for plugin in glob.glob(os.path.join(build, "plugins", "*.so")):
            shutil.copy2(plugin, os.path.join(target, "plugins"))


class BinaryDistribution(Distribution):
    def has_ext_modules(self):
        return True  # a platform wheel: the package holds compiled code


setup(packages=["inflab"], package_dir={"inflab": "framework/python/inflab"},
      cmdclass={"build_py": BuildWithCMake}, distclass=BinaryDistribution, zip_safe=False)
