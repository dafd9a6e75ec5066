"""portaft-swanlab: log a portaft run to SwanLab when `train.report_to` names swanlab.

It serves `report_to: swanlab` on every transformers version portaft supports:
transformers 4.45 has no SwanLab integration, and the one in transformers 5 cannot
start a run with swanlab 0.9+. The callback is swanlab's own
(`swanlab.integration.transformers.SwanLabCallback`). Without a SwanLab login
(SWANLAB_API_KEY or `swanlab login`) and without SWANLAB_MODE the run is logged
offline, into the output folder's `swanlog/`; `swanlab sync` uploads it later.
swanlab is imported only when a recipe asks for it.
"""

from pathlib import Path

from portaft import UserError, hookimpl
from portaft.runner.tracking import report_to_names


@hookimpl
def register_callbacks(register, recipe):
    if "swanlab" not in report_to_names(recipe.train):
        return
    try:
        import swanlab
    except ImportError:
        raise UserError("train.report_to: swanlab is not installed. pip install swanlab (or portaft[track])") from None
    try:
        settings = swanlab.Settings()  # SWANLAB_* variables, swanlab.yaml files, a saved `swanlab login`
    except ValueError as exc:  # pydantic's error (a ValueError) names the bad variable
        raise UserError(f"train.report_to: swanlab cannot read its settings: {exc}") from None
    configured = settings.model_fields_set  # what the user chose; we fill in only the rest
    mode = None if "mode" in configured or settings.api_key else "offline"
    output_dir = Path(recipe.train["output_dir"])
    log_dir = settings.log_dir if "log_dir" in configured else output_dir / "swanlog"
    callback = _callback_class()(
        project=None if settings.project.name else output_dir.name,
        experiment_name=recipe.train.get("run_name") or f"{output_dir.name}-{recipe.backend}",
        description=f"{recipe.model.name_or_path} ({recipe.finetune}) on the {recipe.backend} backend",
        tags=[recipe.backend],
        mode=mode,
        log_dir=str(log_dir),
    )
    if mode == "offline":
        note = (f"swanlab: offline (no SwanLab login here), logs in {log_dir}; "
                "`swanlab sync <its run folder>` uploads a run later")
    elif settings.mode == "disabled":
        note = "swanlab: disabled by your SwanLab settings (SWANLAB_MODE)"
    else:
        note = f"swanlab: {settings.mode} mode, logs also in {log_dir}"
    register(callback, report_to="swanlab", note=note)


def _callback_class():
    import swanlab
    from swanlab.integration.transformers import SwanLabCallback

    class PortaftSwanLabCallback(SwanLabCallback):
        """swanlab's callback; the run it starts also finishes with training, so the next
        portaft.run in the same process starts its own run instead of writing into this one."""

        started_run = False

        def on_train_begin(self, args, state, control, **kwargs):
            self.started_run = state.is_world_process_zero and not swanlab.has_run()
            super().on_train_begin(args, state, control, **kwargs)

        def on_train_end(self, args, state, control, **kwargs):
            super().on_train_end(args, state, control, **kwargs)
            if self.started_run and swanlab.has_run():
                swanlab.finish()

    return PortaftSwanLabCallback
