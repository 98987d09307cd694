"""llama-server's command line, served by llama-cpp-python (tests only): the real CPU-only build, run as a server
the spec names. The test prepends a shebang naming the Python that has llama_cpp."""

import os
import sys

FLAGS = {"--model": "--model", "--host": "--host", "--port": "--port", "--alias": "--model_alias",
         "--ctx-size": "--n_ctx", "--n-gpu-layers": "--n_gpu_layers"}
argv, args = [], sys.argv[1:]
while args:
    flag = args.pop(0)
    if flag in FLAGS:
        argv += [FLAGS[flag], args.pop(0)]
os.execv(sys.executable, [sys.executable, "-P", "-s", "-m", "llama_cpp.server", *argv])
