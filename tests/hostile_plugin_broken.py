"""A plug-in module that fails to import (not with ImportError), for the hostile-input tests."""

raise RuntimeError("this plug-in module is broken")
