//! A whole checkpoint read as one job through the engine (shared by the remote tests).
use std::collections::BTreeMap;

use flashpack::checkpoint::Checkpoint;
use flashpack::read::job::{read_host, JobPlan, Piece};
use flashpack::read::LoadOptions;
use flashpack::weights::WeightFile;

/// Every tensor of the checkpoint, loaded as one job (verified when asked).
pub fn load(c: &Checkpoint, verify: bool) -> BTreeMap<String, Vec<u8>> {
    let files: Vec<&WeightFile> = c.shards().iter().map(|s| s.file()).collect();
    let mut names = Vec::new();
    let mut pieces = Vec::new();
    for (k, f) in files.iter().enumerate() {
        for t in f.tensors() {
            names.push(t.name.clone());
            pieces.push(Piece {
                file: k,
                start: t.start,
                end: t.end,
            });
        }
    }
    let plan = if verify {
        JobPlan::verified(&files, &pieces).unwrap()
    } else {
        JobPlan::new(&files, &pieces).unwrap()
    };
    let opts = LoadOptions {
        verify,
        ..Default::default()
    };
    let (mem, _) = read_host(&files, &plan, &opts).unwrap();
    names
        .into_iter()
        .enumerate()
        .map(|(i, n)| (n, plan.bytes(&mem, i).to_vec()))
        .collect()
}
