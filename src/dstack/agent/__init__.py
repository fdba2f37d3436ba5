"""The dstack host agent.

Standard library only: the agent must start on a bare host with nothing but Python 3.9+,
copied over as one zipapp. Nothing here may import third-party packages or `dstack.`
modules outside `dstack.agent`.
"""

__version__ = "0.1.0"
