"""``python -m bench evals``: spoken scenarios scored per stack with pipecat's eval harness.

- :mod:`.bot`: Voice Lab's pipeline behind pipecat's eval transport;
- :mod:`.stacks`: what each stack's sessions are built from (and the fakes' answers);
- :mod:`.harness`: the harness's services made from ours (ears, user voice, judge);
- :mod:`.run`: one scenario folder on one stack, one result per scenario;
- :mod:`.scorecard`: a stack's figures from its results, and the results files.
"""
