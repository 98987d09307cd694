"""The gate's native.loaderEnvironment rule, variable by variable, with the loader documentation each comes from.
Pure: the judgement of a launch, no process started."""

from __future__ import annotations

import pytest

from reconciler.gate.verdict import Decision
from tests.test_gate_policy import PYTHON, SOURCE, TRUSTS_PYTHON, judge, native, policy, rules_of

LOADS_CODE = {
    "glibc ld.so(8)": ["LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH", "LD_BIND_NOW", "GLIBC_TUNABLES"],
    "glibc secure-execution list": ["GCONV_PATH", "GETCONF_DIR", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH", "NIS_PATH",
                                    "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS"],
    "python(1)": ["PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONEXECUTABLE",
                  "PYTHONPYCACHEPREFIX", "PYTHONPLATLIBDIR", "PYTHONBREAKPOINT", "HOME"],
    "node": ["NODE_OPTIONS", "NODE_PATH", "NODE_REPL_EXTERNAL_MODULE"],
    "the JVM": ["JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH"],
    "openssl-env(7)": ["OPENSSL_CONF", "OPENSSL_CONF_INCLUDE", "OPENSSL_ENGINES", "OPENSSL_MODULES"],
    "perlrun": ["PERL5LIB", "PERLLIB", "PERL5OPT", "PERL5DB"],
    "ruby(1), RubyGems": ["RUBYLIB", "RUBYOPT", "RUBYPATH", "GEM_HOME", "GEM_PATH"],
    "bash(1), sh": ["BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4"],
    "GIO, GTK": ["GIO_MODULE_DIR", "GIO_EXTRA_MODULES", "GTK_PATH", "GTK_MODULES", "GTK_IM_MODULE_FILE"],
    "Lua": ["LUA_INIT", "LUA_INIT_5_4", "LUA_PATH", "LUA_PATH_5_1", "LUA_CPATH", "LUA_CPATH_5_4"],
    "GPU and threading runtimes": ["OMP_TOOL_LIBRARIES", "VK_ICD_FILENAMES", "VK_DRIVER_FILES", "VK_ADD_DRIVER_FILES",
                                   "VK_LAYER_PATH", "VK_ADD_LAYER_PATH", "VK_INSTANCE_LAYERS", "VK_LOADER_LAYERS_ENABLE",
                                   "OCL_ICD_VENDORS", "OCL_ICD_FILENAMES", "OPENCL_VENDOR_PATH", "HSA_TOOLS_LIB"],
    "words that name code": ["CUDA_INJECTION64_PATH", "NCCL_NET_PLUGIN", "NCCL_TUNER_PLUGIN", "QT_PLUGIN_PATH",
                             "GST_PLUGIN_PATH", "MYAPP_PLUGINS", "SOME_PRELOAD"],
}
DATA = ["PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONHASHSEED", "OMP_NUM_THREADS", "MALLOC_ARENA_MAX",
        "TMPDIR", "TZDIR", "TZ", "LANG", "LC_ALL", "HF_HOME", "NCCL_DEBUG", "MODEL_DIR", "DATABASE_URL",
        "LOAD", "LDAP_URI", "PLUGINLESS", "ENVIRONMENT", "SSL_CERT_FILE", "HTTPS_PROXY"]


@pytest.mark.parametrize("variable", [name for names in LOADS_CODE.values() for name in names])
def test_a_variable_a_loader_documents_is_denied_on_a_trusted_program(variable: str) -> None:
    verdict = judge(native(env={variable: "/tmp/evil", "PYTHONUNBUFFERED": "1"}), policy(**TRUSTS_PYTHON), PYTHON)
    assert verdict.decision is Decision.deny and rules_of(verdict.reasons) == ["native.loaderEnvironment"]
    assert verdict.reasons[0].message.startswith(f"env {variable} ") and "/tmp/evil" not in verdict.reasons[0].message
    assert f"spec.native.loaderEnvironment of {SOURCE}" in verdict.reasons[0].message


@pytest.mark.parametrize("variable", ["JAVA_TOOL_OPTIONS", "OPENSSL_CONF", "NCCL_NET_PLUGIN"])
def test_a_documented_variable_is_allowed_with_exactly_the_listed_value(variable: str) -> None:
    rules = policy(native=TRUSTS_PYTHON["native"] | {"loaderEnvironment": [{"name": variable, "value": "/opt/x"}]})
    assert judge(native(env={variable: "/opt/x"}), rules, PYTHON).approved
    assert not judge(native(env={variable: "/opt/x:/tmp/evil"}), rules, PYTHON).approved


@pytest.mark.parametrize("variable", DATA)
def test_a_variable_that_is_data_is_not_a_loader_variable(variable: str) -> None:
    assert judge(native(env={variable: "/srv/data"}), policy(**TRUSTS_PYTHON), PYTHON).approved
