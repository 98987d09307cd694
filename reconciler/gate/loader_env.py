"""Which environment variables make a program load or run code other than the file the gate trusted, as the loaders'
own documentation describes them (cited per group; docs/concepts/gate.md lists the sources). Pure data.

Trusted programs are not limited to names the Policy lists: a trusted python3 app takes its own settings through
env (DATABASE_URL, MODEL_DIR, ...), so an allow-list would make every Policy list names wholesale and stop
meaning anything. Names here are denied unless the Policy allows the exact value (native.loaderEnvironment).
"""

from __future__ import annotations

# Families whose every member configures a loader.
LOADER_PREFIXES = (
    "LD_",  # glibc ld.so(8): LD_PRELOAD, LD_AUDIT, LD_LIBRARY_PATH, ... (all of them are the loader's)
    "LUA_INIT", "LUA_PATH", "LUA_CPATH",  # Lua manual §7 (lua.c): LUA_INIT runs code; also the _5_x variants
)
LOADER_VARIABLES = frozenset({
    # glibc: ld.so(8)'s tunables, and what it strips from a secure-execution program's environment because each
    # names files glibc loads as its own (gconv modules, getconf programs, message catalogs holding printf formats,
    # locales, resolver settings). TMPDIR and TZDIR, also stripped, only say where files go or which zone data is
    # read, as spec.workingDir may; MALLOC_TRACE does nothing without LD_PRELOAD of libc_malloc_debug (glibc 2.34).
    "GLIBC_TUNABLES", "GCONV_PATH", "GETCONF_DIR", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH", "NIS_PATH", "NLSPATH",
    "RESOLV_HOST_CONF", "RES_OPTIONS",
    # Python, "Command line and environment": search paths, start-up and breakpoint hooks, the bytecode cache
    # (.pyc files are read from PYTHONPYCACHEPREFIX's tree), the user site whose .pth files run code.
    "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "PYTHONEXECUTABLE", "PYTHONPYCACHEPREFIX",
    "PYTHONPLATLIBDIR", "PYTHONBREAKPOINT",
    # HOME holds the user site-packages (site: .pth files run at start, unless PYTHONNOUSERSITE), Node's
    # ~/.node_modules and ~/.node_libraries (modules: the folders), RubyGems' ~/.gem.
    "HOME",
    # Node.js CLI: NODE_OPTIONS takes --require/--import; module paths; a module loaded in place of the REPL.
    "NODE_OPTIONS", "NODE_PATH", "NODE_REPL_EXTERNAL_MODULE",
    # The JVM: JAVA_TOOL_OPTIONS (JVMTI: -agentpath, -javaagent), _JAVA_OPTIONS (HotSpot), JDK_JAVA_OPTIONS and
    # CLASSPATH (the java launcher).
    "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH",
    # OpenSSL, openssl-env(7): a config file (which can load engines and providers), its includes, their folders.
    "OPENSSL_CONF", "OPENSSL_CONF_INCLUDE", "OPENSSL_ENGINES", "OPENSSL_MODULES",
    # Perl, perlrun: library paths, PERL5OPT's -M and -d, the debugger PERL5DB names.
    "PERL5LIB", "PERLLIB", "PERL5OPT", "PERL5DB",
    # Ruby, ruby(1): library path, RUBYOPT's -r, the -S search path; RubyGems' gem folders.
    "RUBYLIB", "RUBYOPT", "RUBYPATH", "GEM_HOME", "GEM_PATH",
    # Shells, bash(1) and sh: files sourced at start; SHELLOPTS=xtrace makes bash expand (and run) PS4.
    "BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4",
    # GLib/GTK: GIO and GTK module folders and lists.
    "GIO_MODULE_DIR", "GIO_EXTRA_MODULES", "GTK_PATH", "GTK_MODULES", "GTK_IM_MODULE_FILE",
    # The loaders an engine's GPU and threading runtimes use: OpenMP tools (OpenMP 5 OMP_TOOL_LIBRARIES), Vulkan
    # drivers and layers (Vulkan-Loader), OpenCL drivers (ocl-icd), ROCm tools (HSA_TOOLS_LIB).
    "OMP_TOOL_LIBRARIES", "VK_ICD_FILENAMES", "VK_DRIVER_FILES", "VK_ADD_DRIVER_FILES", "VK_LAYER_PATH",
    "VK_ADD_LAYER_PATH", "VK_INSTANCE_LAYERS", "VK_LOADER_LAYERS_ENABLE", "OCL_ICD_VENDORS", "OCL_ICD_FILENAMES",
    "OPENCL_VENDOR_PATH", "HSA_TOOLS_LIB",
})
# Words that say a variable names code to load, whatever runtime reads it: CUDA_INJECTION64_PATH, NCCL_NET_PLUGIN,
# QT_PLUGIN_PATH, GST_PLUGIN_PATH, an app's own FOO_PLUGINS. The long tail no list keeps up with tends to use them.
CODE_WORDS = frozenset({"PRELOAD", "PLUGIN", "PLUGINS", "INJECTION", "INJECTION32", "INJECTION64"})


def loads_code(name: str) -> bool:
    """Whether env `name` makes a program load or run code it was not started as."""
    return name.startswith(LOADER_PREFIXES) or name in LOADER_VARIABLES or not CODE_WORDS.isdisjoint(name.split("_"))
