"""The model library stays free of the server's and the store's dependencies."""
import subprocess
import sys


def test_restuning_imports_no_fastapi_or_redis():
    code = (
        "import sys, pkgutil, importlib, restuning\n"
        "for m in pkgutil.walk_packages(restuning.__path__, 'restuning.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = [m for m in ('fastapi', 'redis', 'uvicorn', 'starlette') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
