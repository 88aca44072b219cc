"""Tools the agent can call: an embedded SQLite database per session, and pipecat function calling.

- :mod:`pipeline.tools.db`: the seeded template and each session's copy;
- :mod:`pipeline.tools.catalog`: the tools, their schemas and speakable results;
- :mod:`pipeline.tools.installer`: offering them to an LLM that can call them, timing each call.
"""
