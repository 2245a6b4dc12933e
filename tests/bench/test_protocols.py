"""`restune bench v2`: one short real run (a server subprocess, /v1 multipart and /v2 through tritonclient)."""
import json

from restune.cli import main


def test_short_real_run_writes_its_result(tmp_path, capsys):
    code = main(["bench", "v2", "--backbone", "restune_vit_micro", "--tasks", "3", "--concurrency", "4",
                 "--duration", "1", "--rounds", "1", "--out-dir", str(tmp_path), "--json"])
    payload = json.loads(capsys.readouterr().out)
    v1, v2 = payload["protocols"]["v1_multipart"], payload["protocols"]["v2_tritonclient"]
    for side in (v1, v2):
        assert side["requests_ok"] > 0 and side["errors"] == {} and 1 <= side["mean_batch_size"] <= 2
        assert side["client_cpu_ms_per_request"] > 0
    assert payload["throughput_ratio_v2_over_v1"] == round(v2["throughput_rps"] / v1["throughput_rps"], 4)
    assert code in (0, 1)  # 1: under the 0.95 target, which a 1-second run on a busy machine may be
    written = list(tmp_path.glob("v2-vs-v1-restune_vit_micro-c4-cpu-*t.json"))
    assert len(written) == 1 and json.loads(written[0].read_text())["benchmark"] == "v2"
