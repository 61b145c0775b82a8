"""Read a qat sweep's TensorBoard output back with the real tensorboard package.

usage: tensorboard_check.py SWEEP_ROOT SESSIONS GROUPS EPOCHS [EVERY]
Checks the HParams experiment at the root, one session per run with start and end info, the
number of session groups, and the per-run scalars; prints a one-line summary. With EVERY, the
sweep is of language models evaluated every EVERY steps: validation scalars at those steps.
"""
import math
import sys

from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard import context
from tensorboard.plugins.hparams import api_pb2, metadata


def main(root, sessions, groups, epochs, every=None):
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(root)
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, root)
    ctx = context.RequestContext()
    # what the hparams plugin reads: its summaries through the data provider
    by_run = provider.list_tensors(ctx, experiment_id="", plugin_name=metadata.PLUGIN_NAME)
    content = {
        run: {tag: series.plugin_content for tag, series in tags.items()} for run, tags in by_run.items()
    }
    experiments = [
        metadata.parse_experiment_plugin_data(c[metadata.EXPERIMENT_TAG])
        for c in content.values()
        if metadata.EXPERIMENT_TAG in c
    ]
    assert len(experiments) == 1, f"expected one experiment summary, found {len(experiments)}"
    hparam_names = sorted(h.name for h in experiments[0].hparam_infos)
    metric_tags = sorted(m.name.tag for m in experiments[0].metric_infos)
    starts = {
        run: metadata.parse_session_start_info_plugin_data(c[metadata.SESSION_START_INFO_TAG])
        for run, c in content.items()
        if metadata.SESSION_START_INFO_TAG in c
    }
    ends = {
        run: metadata.parse_session_end_info_plugin_data(c[metadata.SESSION_END_INFO_TAG])
        for run, c in content.items()
        if metadata.SESSION_END_INFO_TAG in c
    }
    assert len(starts) == sessions, f"{len(starts)} sessions, expected {sessions}"
    assert set(ends) == set(starts), "every session has an end"
    statuses = {api_pb2.Status.Name(e.status) for e in ends.values()}
    group_names = {s.group_name for s in starts.values()}
    assert len(group_names) == groups, f"{len(group_names)} groups, expected {groups}: {group_names}"
    for run in starts:
        acc = EventAccumulator(f"{root}/{run}")
        acc.Reload()
        if every is None:
            accuracy = acc.Scalars("test/accuracy")
            assert len(accuracy) == epochs, f"{run}: {len(accuracy)} test/accuracy points, expected {epochs}"
            assert all(0.0 <= e.value <= 1.0 for e in accuracy)
            assert acc.Histograms("fc1.weight"), f"{run}: no weight histogram"
            continue
        loss, bpc, ppl = (acc.Scalars(t) for t in ("val/loss", "val/bpc", "val/perplexity"))
        assert [e.step for e in loss] == [every * (i + 1) for i in range(epochs)], f"{run}: steps {[e.step for e in loss]}"
        for l, b, p in zip(loss, bpc, ppl):
            assert abs(b.value - l.value / math.log(2)) < 1e-4 and abs(p.value - math.exp(l.value)) < 1e-3 * p.value
        assert acc.Histograms("blocks.0.attn.qkv.weight"), f"{run}: no weight histogram"
    print(
        f"sessions={len(starts)} groups={len(group_names)} statuses={sorted(statuses)} "
        f"hparams={hparam_names} metrics={metric_tags}"
    )


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
