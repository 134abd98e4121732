"""Triton-compatible Python-backend models: each instance runs model.py in a process of its own.

runtime.py is the server's side (PythonRuntime), stub.py the model process, ipc.py the wire
between them, triton_python_backend_utils.py the `pb_utils` module model.py files import, and
config.py the load-time checks and `auto_complete_config`. This package's `__init__` stays empty:
the model process imports the package and must not pay for the server's imports.
"""
