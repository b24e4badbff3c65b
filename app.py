"""fbloop's Streamlit app: runs in a database, their PCC curves, Φ̂ beside Φ*.

Start it with `fbloop app` or `streamlit run app.py`; the database comes from
the FBLOOP_DB environment variable (default runs/fbloop.db).
"""

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import streamlit as st  # noqa: E402

from fbloop import views  # noqa: E402
from fbloop.store import Store  # noqa: E402

st.set_page_config(page_title="fbloop", layout="wide")
st.title("fbloop — features from feedback")

db_path = os.environ.get("FBLOOP_DB", "runs/fbloop.db")
if not Path(db_path).exists():
    st.info(f"No database at {db_path} yet. Run `fbloop demo` or `fbloop run` first.")
    st.stop()

store = Store(db_path)
runs = store.runs()
if not runs:
    st.info(f"{db_path} holds no runs yet.")
    st.stop()

st.dataframe(
    [{"run": r["id"], "status": r["status"], "kind": r["kind"], "p": r["p"],
      "answers": f"{r['answers']}/{r['budget']}", "PCC": r["pcc"]} for r in runs],
    hide_index=True, width="stretch",
)
run_id = st.selectbox("Run", [r["id"] for r in runs][::-1], key="run")
curve = views.pcc_curve(store, run_id)
left, right = st.columns(2)
with left:
    st.subheader("PCC against answers")
    if curve["answers"]:
        st.line_chart({"answers": curve["answers"], "PCC": curve["pcc"]}, x="answers", y="PCC")
    else:
        st.caption("No snapshot yet.")
with right:
    pair = views.phi_pair(store, run_id)
    st.subheader("Φ̂ beside Φ*")
    if pair is None:
        st.caption("Shown once the run has finished (p ≤ 256).")
    else:
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.8))
        for ax, mat, title in zip(axes, pair, ("learned Φ̂", "target Φ*")):
            im = ax.imshow(mat, cmap="RdBu_r", vmin=-1, vmax=1)
            ax.set_title(title)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(im, ax=axes, shrink=0.8)
        st.pyplot(fig)
store.close()
