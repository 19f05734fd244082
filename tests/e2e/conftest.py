"""Agent fixtures (real agents in-process and as processes) from support.agent_fixtures."""

from support.agent_fixtures import daemons, sock_dir, start_agent

__all__ = ["daemons", "sock_dir", "start_agent"]
