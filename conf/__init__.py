"""flowcg's Hydra configs: this folder (the repository's top-level ``conf/``) is installed as the
package ``flowcg.conf`` (see ``[tool.setuptools]`` in pyproject.toml), so the CLIs find their
configs on Hydra's search path ``pkg://flowcg.conf`` from any install, editable or wheel."""
