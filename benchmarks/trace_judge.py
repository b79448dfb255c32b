"""Judge reliability for OpenMedReason-Bench: do the trace metrics move when traces get worse?

Reference traces of synthetic cases are perturbed in known ways and scored against their
own checklists through the production path (judge-built checklists, presence and
correctness probes on the generation engine, `score_trace`, the per-item aggregate):

    reference          the reference trace itself (the baseline every delta is taken against)
    drop_1_perception  the first perception sentence removed
    drop_2_perception  the first two perception sentences removed
    swap_fact          one medical fact changed into a wrong one (one word swapped)
    no_justification   the justification section removed
    shuffle            all sentences in random order
    pad                four sentences of generic background added
    unrelated          the reference trace of another case

It then measures the judge itself: repeat-judge agreement (the same judge under two seeds)
and two-judge agreement (Cohen's kappa per probe) over every probe asked above.

By default the judges are scripted ones on the local chat server
(`medrecipe.testing.trace_judge`: they read the trace and answer by keywords; judge B is
more lenient; the repeat-judge run flips 5 % of its answers at random per seed, standing
in for sampling noise). With ``--base-url`` and ``--model`` the same script measures a real
judge model (``--model-b`` for the second judge; ``--api-key-env`` for the key).

    python benchmarks/trace_judge.py
    python benchmarks/trace_judge.py --base-url http://127.0.0.1:8000/v1 --model my-judge
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from medrecipe.config import TeacherConfig
from medrecipe.evaluate.agreement import agreement
from medrecipe.evaluate.checklist import ChecklistStore, build_checklists
from medrecipe.evaluate.judging import JudgeClient
from medrecipe.evaluate.probes import Trace, probe_traces
from medrecipe.evaluate.trace import AXES, aggregate, score_trace
from medrecipe.prompts import load_template
from medrecipe.schema import Item
from medrecipe.testing.chat_server import ChatServer
from medrecipe.testing.trace_judge import keyword_judge, sentences

# (question, options, answer index, perception, interpretation, justification, (right, wrong))
# Written for this benchmark; {side} is filled with "left" or "right" for two variants.
CASES = [
    ("Based on the chest radiograph, what is the most likely cause of the breathlessness?",
     ["Pneumothorax", "Pleural effusion", "Lobar pneumonia", "Pulmonary oedema"], 1,
     "The frontal radiograph shows blunting of the {side} costophrenic angle. The {side} base "
     "shows a concave meniscus sign. The mediastinum shows no shift.",
     "Free pleural fluid collects in the dependent costophrenic recess. A meniscus reflects "
     "fluid tracking up along the parietal pleura.",
     "The diagnosis is a {side} pleural effusion. Pneumothorax is excluded because lung "
     "markings reach the chest wall.", ("dependent", "superior")),
    ("What does the gallbladder ultrasound most likely show?",
     ["Gallstones", "Hepatic cyst", "Renal calculus", "Splenic infarct"], 0,
     "The gallbladder lumen contains several echogenic foci. Each focus casts posterior "
     "acoustic shadowing. The foci move with patient position.",
     "Calcified stones reflect ultrasound strongly and block its transmission. Mobile foci "
     "favour stones over polyps.",
     "The diagnosis is cholelithiasis. A polyp is excluded because the foci are mobile.",
     ("block", "amplify")),
    ("Which stage of diabetic eye disease does the fundus photograph show?",
     ["Proliferative retinopathy", "Drusen", "Background retinopathy only", "Normal fundus"], 0,
     "The optic disc carries fine new vessels. Scattered dot haemorrhages lie in the {side} "
     "posterior pole. Hard exudates form a partial ring temporal to the fovea.",
     "Retinal ischaemia drives vascular endothelial growth factor release. New vessels on the "
     "disc define proliferative disease.",
     "Severity is proliferative diabetic retinopathy. The next step is panretinal "
     "photocoagulation.", ("endothelial", "epithelial")),
    ("What is the most likely diagnosis on the head CT?",
     ["Epidural haematoma", "Subdural haematoma", "Subarachnoid haemorrhage", "Ischaemic stroke"], 0,
     "The non-contrast CT shows a biconvex hyperdense collection over the {side} temporal lobe. "
     "The collection stops at the suture lines. A skull fracture lies over the collection.",
     "Arterial epidural bleeding usually comes from the middle meningeal artery. Dural "
     "attachment at sutures limits epidural spread.",
     "The diagnosis is an epidural haematoma. The next step is urgent surgical evacuation.",
     ("middle", "posterior")),
    ("Which lesion does the dermoscopy image most likely show?",
     ["Melanoma", "Seborrhoeic keratosis", "Dermatofibroma", "Blue naevus"], 0,
     "The lesion shows an atypical pigment network. Irregular streaks radiate from the {side} "
     "border. A blue-white veil covers the centre.",
     "Regression structures and a blue-white veil raise the probability of melanoma. "
     "Asymmetry of colour and structure is a major melanoma criterion.",
     "The diagnosis is melanoma. Excision biopsy is the next step.", ("raise", "lower")),
    ("What does the knee radiograph most likely show?",
     ["Osteoarthritis", "Septic arthritis", "Gout", "Osteosarcoma"], 0,
     "The radiograph shows joint space narrowing in the {side} medial compartment. Marginal "
     "osteophytes project from the tibial plateau. Subchondral sclerosis lines the joint.",
     "Cartilage loss narrows the weight-bearing joint space. Osteophytes form as bone "
     "remodels under load.",
     "The diagnosis is osteoarthritis. Septic arthritis is excluded because no effusion or "
     "erosion appears.", ("weight-bearing", "non-weight-bearing")),
    ("What is the most likely finding on the abdominal CT?",
     ["Acute appendicitis", "Diverticulitis", "Ovarian torsion", "Crohn disease"], 0,
     "The appendix measures twelve millimetres across. Periappendiceal fat stranding "
     "surrounds the appendix. An appendicolith lies at the appendiceal base.",
     "Luminal obstruction by an appendicolith raises intraluminal pressure. An appendix "
     "wider than six millimetres is abnormal.",
     "The diagnosis is acute appendicitis. The next step is appendicectomy.", ("raises", "lowers")),
    ("What does the histology section most likely show?",
     ["Invasive ductal carcinoma", "Fibroadenoma", "Fat necrosis", "Normal breast"], 0,
     "The section shows irregular nests of atypical cells. The nests infiltrate a desmoplastic "
     "stroma. Mitotic figures are frequent.",
     "Desmoplasia reflects stromal reaction to invasive tumour. Frequent mitoses indicate "
     "high proliferative activity.",
     "The diagnosis is invasive ductal carcinoma. Fibroadenoma is excluded because the "
     "glands infiltrate.", ("invasive", "benign")),
    ("Which arrhythmia does the ECG strip show?",
     ["Atrial fibrillation", "Atrial flutter", "Sinus rhythm", "Ventricular tachycardia"], 0,
     "The strip shows irregularly irregular QRS complexes. No discrete P waves appear. The "
     "baseline carries fine fibrillatory waves.",
     "Disorganised atrial activity replaces coordinated P waves. Variable atrioventricular "
     "conduction produces irregular ventricular timing.",
     "The rhythm is atrial fibrillation. Flutter is excluded because no sawtooth waves appear.",
     ("irregular", "regular")),
    ("What does the breast ultrasound most likely show?",
     ["Simple cyst", "Fibroadenoma", "Carcinoma", "Abscess"], 0,
     "The {side} breast lesion shows an anechoic round interior. Posterior acoustic "
     "enhancement lies behind the lesion. The wall shows thin sharp margins.",
     "Fluid transmits sound without echoes. Enhancement arises because fluid attenuates "
     "less than tissue.",
     "The diagnosis is a simple cyst. No biopsy is needed for a simple cyst.", ("less", "more")),
    ("What is the most likely diagnosis on the brain MRI?",
     ["Multiple sclerosis", "Glioblastoma", "Migraine", "Small vessel disease"], 0,
     "The FLAIR images show ovoid periventricular hyperintensities. The lesions lie "
     "perpendicular to the ventricles. One juxtacortical lesion sits in the {side} frontal lobe.",
     "Demyelinating plaques follow the medullary veins. Dissemination in space supports "
     "multiple sclerosis.",
     "The diagnosis is multiple sclerosis. Small vessel disease is excluded because the "
     "lesions are ovoid and perpendicular.", ("veins", "arteries")),
    ("Which organism does the Gram stain most likely show?",
     ["Streptococcus pneumoniae", "Staphylococcus aureus", "Escherichia coli",
      "Neisseria meningitidis"], 0,
     "The smear shows gram-positive lancet-shaped diplococci. Neutrophils fill the field. "
     "The organisms carry clear capsular halos.",
     "A polysaccharide capsule protects pneumococci from phagocytosis. Lancet-shaped "
     "diplococci are typical of pneumococci.",
     "The organism is Streptococcus pneumoniae. Staphylococci are excluded because they "
     "form clusters.", ("phagocytosis", "antibiotics")),
]
PADDING = ("Imaging findings are always interpreted together with the clinical history. "
           "Many conditions can look alike on a single view. Guidelines recommend "
           "structured reporting in radiology. Careful examination of every region helps "
           "avoid missed findings.")
PERTURBATIONS = ("reference", "drop_1_perception", "drop_2_perception", "swap_fact",
                 "no_justification", "shuffle", "pad", "unrelated")
# metric -> expected direction against the reference: "down", "same" (within 0.02)
EXPECTED = {
    "drop_1_perception": {"presence.perception": "down", "presence.knowledge": "same",
                          "presence.rationale": "same"},
    "drop_2_perception": {"presence.perception": "down", "presence.knowledge": "same"},
    "swap_fact": {"correctness.knowledge": "down", "presence.knowledge": "same"},
    "no_justification": {"presence.rationale": "down", "presence.perception": "same"},
    "shuffle": {"trace_score": "same"},
    "pad": {"trace_score": "same"},
    "unrelated": {"trace_score": "down"},
}


def make_items() -> tuple[list[Item], dict[str, tuple[str, str]]]:
    """Items with reference traces, and the fact to swap in each."""
    items, swaps = [], {}
    for c, (q, opts, ans, per, inter, just, swap) in enumerate(CASES):
        for side in ("left", "right"):
            iid = f"case{c:02d}-{side}"
            ref = {"perception": per.format(side=side), "interpretation": inter.format(side=side),
                   "justification": just.format(side=side)}
            items.append(Item(id=iid, source="bench", task="mm_reasoning", question=q,
                              options=opts, answer="ABCD"[ans], meta={"reference_trace": ref}))
            swaps[iid] = swap
    return items, swaps


def perturb(item: Item, kind: str, swaps: dict[str, tuple[str, str]], other: Item,
            rng: random.Random) -> str:
    """The candidate trace of one perturbation of the item's reference trace."""
    ref = dict(item.meta["reference_trace"])
    if kind.startswith("drop_"):
        k = int(kind.split("_")[1])
        ref["perception"] = " ".join(sentences(ref["perception"])[k:])
    elif kind == "swap_fact":
        right, wrong = swaps[item.id]
        assert right in ref["interpretation"], (item.id, right)
        ref["interpretation"] = ref["interpretation"].replace(right, wrong, 1)
    elif kind == "no_justification":
        ref.pop("justification")
    elif kind == "unrelated":
        ref = dict(other.meta["reference_trace"])
    text = " ".join(v for v in ref.values() if v)
    if kind == "shuffle":
        parts = sentences(text)
        rng.shuffle(parts)
        text = " ".join(parts)
    elif kind == "pad":
        text = PADDING + " " + text
    return text


def flat(summary: dict) -> dict[str, float | None]:
    """{"presence.perception": mean, ..., "trace_score": mean} of an aggregate."""
    out = {f"{m}.{a}": summary["axes"][a][m]["mean"] for a in AXES
           for m in ("presence", "correctness", "score")}
    out["trace_score"] = summary["trace_score"]["mean"]
    return out


def probe_all(judge: JudgeClient, traces: list[Trace], checklists, templates, seed=None):
    return probe_traces(judge, traces, checklists, presence_template=templates["presence"],
                        correctness_template=templates["correctness"], seed=seed)


def probe_lists(a: dict, b: dict) -> dict[str, tuple[list, list]]:
    """Paired presence answers, and correctness answers where both judges asked it."""
    pres_a, pres_b, corr_a, corr_b = [], [], [], []
    for route in sorted(a):
        for pa_, pb_ in zip(a[route], b[route], strict=True):
            pres_a.append(pa_.present)
            pres_b.append(pb_.present)
            if pa_.correctness_status != "not_asked" and pb_.correctness_status != "not_asked":
                corr_a.append(pa_.correct)
                corr_b.append(pb_.correct)
    return {"presence": (pres_a, pres_b), "correctness": (corr_a, corr_b)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", help="a real judge endpoint (default: scripted local judges)")
    ap.add_argument("--model", default="judge-a")
    ap.add_argument("--model-b", default="judge-b", help="second judge for two-judge kappa")
    ap.add_argument("--api-key-env", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    scripted = {"judge-a": keyword_judge(), "judge-b": keyword_judge(lenient=True),
                "judge-noisy": keyword_judge(flip=0.05)}
    server = None
    base_url = args.base_url
    if base_url is None:
        server = ChatServer(responder=lambda body, i: scripted[body["model"]](body, i),
                            record=False).start()
        base_url = server.base_url
    noisy = "judge-noisy" if args.base_url is None else args.model

    def judge(model: str, cache: Path, seed: int = 0) -> JudgeClient:
        cfg = TeacherConfig(model=model, base_url=base_url, api_key_env=args.api_key_env,
                            max_in_flight=32, max_retries=2)
        return JudgeClient(cfg, cache, seed=seed, progress=False)

    items, swaps = make_items()
    rng = random.Random(args.seed)
    templates = {n: load_template(f"trace_{n}") for n in ("checklist", "presence", "correctness")}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            ja = judge(args.model, tmp / "cache")
            build = build_checklists(items, ja, templates["checklist"],
                                     ChecklistStore(tmp / "checklists.jsonl"))
            cl = build.checklists
            traces = []
            for k, it in enumerate(items):
                other = items[(k + 7) % len(items)]
                traces += [Trace(f"{it.id}#{kind}", it, perturb(it, kind, swaps, other, rng))
                           for kind in PERTURBATIONS]
            t0 = time.perf_counter()
            res_a, counts_a = probe_all(ja, traces, cl, templates)
            dt = time.perf_counter() - t0
            n_probes = sum(v for k, v in counts_a.items() if k.startswith(("presence_", "correctness_")))
            per_kind: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
            for tr in traces:
                kind = tr.route.split("#", 1)[1]
                per_kind[kind][tr.item.id].append(score_trace(p.unit() for p in res_a[tr.route]))
            table = {kind: flat(aggregate(per_kind[kind], resamples=1000, seed=args.seed))
                     for kind in PERTURBATIONS}

            # repeat-judge: the same (noisy) judge under two seeds; two judges: A vs B
            r0, _ = probe_all(judge(noisy, tmp / "cache", seed=args.seed), traces, cl, templates)
            r1, _ = probe_all(judge(noisy, tmp / "cache", seed=args.seed + 1), traces, cl, templates)
            res_b, _ = probe_all(judge(args.model_b, tmp / "cache"), traces, cl, templates)
            repeat = {p: agreement(*v) for p, v in probe_lists(r0, r1).items()}
            two = {p: agreement(*v) for p, v in probe_lists(res_a, res_b).items()}
    finally:
        if server is not None:
            server.stop()

    who = "scripted keyword judges on the local chat server" if args.base_url is None else \
        f"{args.model} / {args.model_b} at {args.base_url}"
    n_units = sum(len(c.units) for c in cl.values())
    print(f"judges: {who}")
    print(f"{len(items)} items, {len(cl)} checklists ({n_units} units: "
          + ", ".join(f"{a} {sum(u.axis == a for c in cl.values() for u in c.units)}" for a in AXES)
          + f"), {len(PERTURBATIONS)} traces per item")
    print(f"probes (judge A): {n_probes} in {dt:.2f} s = {n_probes / dt:.0f} probes/s; "
          f"unparsed presence {counts_a['presence_unparsed']}, correctness "
          f"{counts_a['correctness_unparsed']}")
    print()
    cols = ["presence.perception", "presence.knowledge", "presence.rationale",
            "correctness.perception", "correctness.knowledge", "correctness.rationale",
            "trace_score"]
    short = {"presence": "P", "correctness": "C"}
    head = [f"{short.get(c.split('.')[0], '')}_{c.split('.')[1][:4]}" if "." in c else "trace"
            for c in cols]
    print("| perturbation | " + " | ".join(head) + " | moved as expected |")
    print("|---|" + "---|" * len(cols) + "---|")
    base = table["reference"]
    all_ok = True
    for kind in PERTURBATIONS:
        row = table[kind]
        cells = []
        for c in cols:
            v, b = row[c], base[c]
            if v is None:
                cells.append("–")
            elif kind == "reference" or b is None:
                cells.append(f"{100 * v:.1f}")
            else:
                cells.append(f"{100 * v:.1f} ({100 * (v - b):+.1f})")
        checks = []
        for metric, direction in EXPECTED.get(kind, {}).items():
            v, b = row[metric], base[metric]
            ok = v is not None and b is not None and (
                v < b - 1e-9 if direction == "down" else abs(v - b) <= 0.02)
            all_ok &= ok
            checks.append(f"{metric} {direction}: {'yes' if ok else 'NO'}")
        print(f"| {kind} | " + " | ".join(cells) + f" | {'; '.join(checks) or 'baseline'} |")
    print()
    print("agreement (percent agreement / Cohen's kappa over paired probes):")
    for title, agg in ((f"repeat-judge (seeds {args.seed} and {args.seed + 1})", repeat),
                       ("two judges (A vs B)", two)):
        parts = []
        for probe in ("presence", "correctness"):
            a = agg[probe]
            kappa = "–" if a["kappa"] is None else f"{a['kappa']:.3f}"
            parts.append(f"{probe}: n={a['n']}, agreement {100 * (a['agreement'] or 0):.1f}%, "
                         f"kappa {kappa}")
        print(f"  {title}: " + "; ".join(parts))
    print(f"\nevery perturbation moved its metrics the expected way: {'yes' if all_ok else 'NO'}")


if __name__ == "__main__":
    main()
