"""Agent fixtures (real agents in-process and as processes) from support.agent_fixtures."""

from support.agent_fixtures import _logging_configured, daemons, sock_dir, start_agent

__all__ = ["_logging_configured", "daemons", "sock_dir", "start_agent"]
