//! `build` on a real store, with RUN in real containers of this engine's
//! shim: instructions, the layer cache, and errors that name their line.
//! Runs as root. (The comparison with Docker's builder is the chaos test
//! `build_matches_docker`.)

use std::path::PathBuf;

use berth_agent::build::runner::ShimRunner;
use berth_agent::build::{build, BuildError, BuildRequest, Builder};
use berth_agent::image::import::import_rootfs;
use berth_agent::image::ImageStore;
use berth_agent::snapshot::Snapshots;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: ImageStore,
    snapshots: Snapshots,
    runner: ShimRunner,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let store = ImageStore::open(&root.join("images")).unwrap();
        let snapshots = Snapshots::open(&root.join("snapshots")).unwrap();
        let rootfs = root.join("busybox.tar");
        berth_chaos::images::busybox_rootfs_tar(&rootfs).unwrap();
        import_rootfs(
            &store,
            &snapshots,
            "busybox:latest",
            std::fs::File::open(&rootfs).unwrap(),
            0,
        )
        .unwrap();
        Self {
            _dir: dir,
            root,
            store,
            snapshots,
            runner: ShimRunner {
                shim_exe: PathBuf::from(env!("CARGO_BIN_EXE_berth-agent")),
            },
        }
    }

    fn build<B: AsRef<[u8]>>(
        &self,
        files: &[(&str, B)],
        req: BuildRequest,
    ) -> (Result<String, BuildError>, String) {
        let builder = Builder {
            store: &self.store,
            snapshots: &self.snapshots,
            work: self.root.join("work"),
            volumes: self.root.join("volumes"),
            runner: &self.runner,
            kept: &berth_agent::build::kept::Kept::open(&self.root.join("contexts")).unwrap(),
        };
        let mut out = Vec::new();
        let r =
            build(&builder, &req, context(files).as_slice(), &mut out).map(|b| b.image.id.clone());
        (r, String::from_utf8_lossy(&out).into_owned())
    }

    /// The content of `path` in image `id`, read from its layers (top
    /// first, whiteouts ignored: the tests do not delete).
    fn file(&self, id: &str, path: &str) -> Option<Vec<u8>> {
        let inspect = self.store.inspect(id).unwrap();
        let layers: Vec<String> = inspect["RootFS"]["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        for l in layers.iter().rev() {
            let p = self
                .snapshots
                .path(l)
                .unwrap()
                .join(path.trim_start_matches('/'));
            if let Ok(b) = std::fs::read(&p) {
                return Some(b);
            }
        }
        None
    }
}

impl Fixture {
    /// The mode and owner of `path` in image `id` (the topmost layer that
    /// holds it).
    fn meta(&self, id: &str, path: &str) -> Option<(u32, u32, u32)> {
        use std::os::unix::fs::MetadataExt;
        let inspect = self.store.inspect(id).unwrap();
        let layers = inspect["RootFS"]["Layers"].as_array().unwrap().clone();
        for l in layers.iter().rev() {
            let p = self
                .snapshots
                .path(l.as_str().unwrap())
                .unwrap()
                .join(path.trim_start_matches('/'));
            if let Ok(m) = std::fs::symlink_metadata(&p) {
                return Some((m.mode() & 0o7777, m.uid(), m.gid()));
            }
        }
        None
    }
}

fn tar_of<B: AsRef<[u8]>>(files: &[(&str, B)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, body) in files {
        let mut h = tar::Header::new_gnu();
        let body = body.as_ref();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, name, body).unwrap();
    }
    b.into_inner().unwrap()
}

fn context<B: AsRef<[u8]>>(files: &[(&str, B)]) -> Vec<u8> {
    tar_of(files)
}

fn req(tag: &str) -> BuildRequest {
    BuildRequest {
        tags: vec![tag.to_string()],
        network: "none".into(),
        ..Default::default()
    }
}

const DOCKERFILE: &str = r#"# syntax and comments are skipped
ARG BASE=busybox
FROM ${BASE} AS base
ARG GREETING=hello
ENV APP=/app \
    MODE=test
WORKDIR $APP
COPY a.txt sub/ ./
RUN echo "${GREETING:-none} from RUN" > made.txt && cat made.txt
LABEL org.example.kind="demo" other=x
EXPOSE 8080/tcp 53/udp
USER nobody
CMD ["cat", "made.txt"]

FROM scratch
COPY --from=base /app/made.txt /bin/busybox /
ENTRYPOINT ["/busybox"]
CMD ["cat", "/made.txt"]
"#;

/// The context of [`DOCKERFILE`].
const DEMO_FILES: [(&str, &str); 3] = [
    ("Dockerfile", DOCKERFILE),
    ("a.txt", "A\n"),
    ("sub/b.txt", "B\n"),
];

#[test]
fn a_multi_stage_build_makes_the_image_and_the_cache_serves_a_rebuild() {
    if !nix::unistd::geteuid().is_root() {
        panic!("the build tests run as root (they mount overlays and run containers)");
    }
    let f = Fixture::new();
    let files = DEMO_FILES;
    let (id, out) = f.build(&files, req("demo:1"));
    let id = id.unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert!(out.contains("Step 1/15 : ARG BASE=busybox"), "{out}");
    assert!(out.contains("hello from RUN"), "RUN's output shows: {out}");
    assert!(
        out.contains(&format!("Successfully built {}", &id[7..19])),
        "{out}"
    );
    assert!(out.contains("Successfully tagged demo:1"), "{out}");
    assert_eq!(f.file(&id, "/made.txt").unwrap(), b"hello from RUN\n");
    assert!(f.file(&id, "/busybox").is_some());
    assert!(
        f.file(&id, "/a.txt").is_none(),
        "stage two holds only what it copied"
    );
    let inspect = f.store.inspect("demo:1").unwrap();
    assert_eq!(
        inspect["Config"]["Entrypoint"],
        serde_json::json!(["/busybox"])
    );
    assert_eq!(
        inspect["Config"]["Cmd"],
        serde_json::json!(["cat", "/made.txt"])
    );

    // The first stage, by --target: its metadata and files.
    let mut r = req("demo:base");
    r.target = "base".into();
    let (base, out) = f.build(&files, r.clone());
    let base = base.unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert_eq!(
        out.matches(" ---> Using cache").count(),
        9,
        "every step after FROM cached: {out}"
    );
    let c = &f.store.inspect(&base).unwrap()["Config"];
    assert_eq!(c["WorkingDir"], "/app");
    assert_eq!(c["User"], "nobody");
    assert_eq!(c["Labels"]["org.example.kind"], "demo");
    assert!(
        c["ExposedPorts"].get("8080/tcp").is_some() && c["ExposedPorts"].get("53/udp").is_some()
    );
    assert!(c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == "MODE=test"));
    assert_eq!(f.file(&base, "/app/a.txt").unwrap(), b"A\n");
    assert_eq!(
        f.file(&base, "/app/b.txt").unwrap(),
        b"B\n",
        "a directory's content is copied"
    );

    // An edited COPY source busts the cache from that step on.
    let edited = [
        ("Dockerfile", DOCKERFILE),
        ("a.txt", "A2\n"),
        ("sub/b.txt", "B\n"),
    ];
    let (again, out) = f.build(&edited, r);
    let again = again.unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert_ne!(again, base);
    assert_eq!(
        out.matches(" ---> Using cache").count(),
        3,
        "cached up to the COPY: {out}"
    );
    assert_eq!(f.file(&again, "/app/a.txt").unwrap(), b"A2\n");
}

#[test]
fn errors_name_the_line_and_tag_nothing() {
    let f = Fixture::new();
    let cases: &[(&str, &str)] = &[
        (
            "FROM busybox\nFOO bar\n",
            "line 2: unknown instruction: FOO",
        ),
        ("FROM busybox\nRUN\n", "line 2"),
        (
            "FROM busybox\nCOPY ../secret /x\n",
            "line 2: forbidden path outside the build context",
        ),
        (
            "FROM busybox\nCOPY missing.txt /x\n",
            "line 2: file not found in build context",
        ),
        (
            "FROM busybox\nRUN true\nRUN exit 3\n",
            "line 3: The command '/bin/sh -c exit 3' returned a non-zero code: 3",
        ),
        (
            "FROM busybox\nADD http://example.com/x /x\n",
            "line 2: ADD of a remote URL is not supported",
        ),
        ("FROM nosuch:image\n", "line 1"),
        (
            "FROM busybox\nCOPY --chmod=17777 Dockerfile /x\n",
            "line 2: invalid --chmod=17777",
        ),
        (
            "FROM busybox\nRUN --mount=type=cache,target=/x true\n",
            "line 2: RUN --mount is not supported",
        ),
    ];
    for (df, want) in cases {
        let (r, out) = f.build(&[("Dockerfile", df)], req("bad:1"));
        let e = r.expect_err(df).to_string();
        assert!(e.contains(want), "{df:?}: {e}\n{out}");
        assert!(f.store.inspect("bad:1").is_err(), "{df:?} tagged an image");
    }
}

#[test]
fn hostile_contexts_are_refused() {
    let f = Fixture::new();
    // A context entry that climbs out.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    let body = b"FROM busybox\n";
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    b.append_data(&mut h, "Dockerfile", &body[..]).unwrap();
    let mut h = tar::Header::new_old();
    h.set_size(1);
    h.as_old_mut().name[..9].copy_from_slice(b"../escape");
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    b.append(&h, &b"x"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let builder = Builder {
        store: &f.store,
        snapshots: &f.snapshots,
        work: f.root.join("work"),
        volumes: f.root.join("volumes"),
        runner: &f.runner,
        kept: &berth_agent::build::kept::Kept::open(&f.root.join("contexts")).unwrap(),
    };
    let mut out = Vec::new();
    let e = build(&builder, &req("hostile:1"), tar.as_slice(), &mut out).unwrap_err();
    assert!(e.to_string().contains("climbs out"), "{e}");
    assert!(!f.root.join("escape").exists());

    // A symlink in the context that points at the host is followed inside
    // the context only.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM busybox\nCOPY link /stolen\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/hostname", dir.path().join("link")).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", dir.path()).unwrap();
    let tar = b.into_inner().unwrap();
    let mut out = Vec::new();
    let e = build(&builder, &req("hostile:2"), tar.as_slice(), &mut out).unwrap_err();
    assert!(
        e.to_string().contains("file not found in build context"),
        "{e}"
    );
}

#[test]
fn copy_takes_chmod_and_chown_and_add_unpacks_a_local_tar() {
    let f = Fixture::new();
    // A tar in the context, for ADD to unpack.
    let inner = tar_of(&[("pkg/readme", "inside\n")]);
    let df = "FROM busybox\n\
              ARG MODE=750\n\
              COPY --chmod=${MODE} a.txt /x/a.txt\n\
              COPY --chown=nobody:nogroup a.txt /y/\n\
              COPY --chown=1000:2000 --chmod=600 a.txt /z/\n\
              ADD pkg.tar /opt/\n\
              COPY [\"a.txt\", \"b.txt\", \"/many/\"]\n\
              ADD notes.gz /opt/\n";
    let files = [
        ("Dockerfile", df.as_bytes().to_vec()),
        ("a.txt", b"A\n".to_vec()),
        ("b.txt", b"B\n".to_vec()),
        ("pkg.tar", inner),
        ("notes.gz", gz_notes()),
    ];
    let (id, out) = f.build(&files, req("modes:1"));
    let id = id.unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert_eq!(f.meta(&id, "/x/a.txt"), Some((0o750, 0, 0)));
    assert_eq!(f.meta(&id, "/z/a.txt"), Some((0o600, 1000, 2000)));
    assert_eq!(f.file(&id, "/opt/pkg/readme").unwrap(), b"inside\n");
    assert_eq!(f.file(&id, "/many/b.txt").unwrap(), b"B\n");
    assert_eq!(f.meta(&id, "/y/a.txt"), Some((0o644, 65534, 65534)));
    // A gzip file that holds no tar is copied as it is, as Docker does.
    assert_eq!(
        f.file(&id, "/opt/notes.gz").map(|b| b.len()),
        Some(gz_notes().len())
    );
}

/// A context tar of files and symlinks, as a hostile client may send it.
fn tar_with_links(files: &[(&str, &str)], links: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, body) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        b.append_data(&mut h, name, body.as_bytes()).unwrap();
    }
    for (name, target) in links {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        b.append_link(&mut h, name, target).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn symlinks_in_a_context_never_reach_the_host() {
    let f = Fixture::new();
    let host = tempfile::tempdir().unwrap();
    let victim = host.path().join("victim");
    std::fs::write(&victim, "[z-a host secret\n").unwrap();
    let builder = Builder {
        store: &f.store,
        snapshots: &f.snapshots,
        work: f.root.join("work"),
        volumes: f.root.join("volumes"),
        runner: &f.runner,
        kept: &berth_agent::build::kept::Kept::open(&f.root.join("contexts")).unwrap(),
    };
    let host_dir = host.path().display().to_string();
    let inside = format!("{}/victim", host_dir.trim_start_matches('/'));
    // The Dockerfile named through a symlink to the host's directory, and
    // excluded by .dockerignore, which makes the build remove it.
    let tar = tar_with_links(
        &[
            (inside.as_str(), "FROM busybox\n"),
            (".dockerignore", "*\n"),
        ],
        &[("sub", host_dir.as_str())],
    );
    let mut req = req("links:1");
    req.dockerfile = "sub/victim".into();
    let mut out = Vec::new();
    let _ = build(&builder, &req, tar.as_slice(), &mut out);
    assert!(victim.exists(), "the build removed a host file");

    // A .dockerignore that links to a host file is read inside the context
    // (where it does not exist), never from the host.
    let tar = tar_with_links(
        &[("Dockerfile", "FROM busybox\n")],
        &[(".dockerignore", victim.to_str().unwrap())],
    );
    let mut out = Vec::new();
    let r = build(&builder, &self::req("links:2"), tar.as_slice(), &mut out);
    let all = format!("{r:?}{}", String::from_utf8_lossy(&out));
    assert!(!all.contains("host secret"), "{all}");
    assert!(r.is_ok(), "{all}");
}

#[test]
fn a_doubling_variable_is_refused_not_grown() {
    let f = Fixture::new();
    let mut df = String::from("FROM busybox\nENV A=xxxxxxxxxxxxxxxx\n");
    for _ in 0..40 {
        df.push_str("ENV A=$A$A\n");
    }
    let (r, out) = f.build(&[("Dockerfile", &df)], req("double:1"));
    let e = r.expect_err("a value of 2^44 bytes").to_string();
    assert!(
        e.contains("after variable substitution passes"),
        "{e}\n{out}"
    );
}

#[test]
fn copy_from_a_one_layer_image_works() {
    let f = Fixture::new();
    let (id, out) = f.build(
        &[(
            "Dockerfile",
            "FROM scratch\nCOPY --from=busybox /bin/busybox /bb\n",
        )],
        req("onelayer:1"),
    );
    let id = id.unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert!(f.file(&id, "/bb").is_some());
}

/// A gzip file that holds text, not a tar.
fn gz_notes() -> Vec<u8> {
    use std::io::Write as _;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&b"just notes, not an archive\n".repeat(50))
        .unwrap();
    gz.finish().unwrap()
}

#[test]
fn the_cache_serves_only_steps_whose_layers_are_still_here() {
    if !nix::unistd::geteuid().is_root() {
        panic!("the build tests run as root (they mount overlays and run containers)");
    }
    let f = Fixture::new();
    let files = DEMO_FILES;
    let mut r = req("demo:base");
    r.target = "base".into();
    let (first, out) = f.build(&files, r.clone());
    let first = first.unwrap_or_else(|e| panic!("{e}\n{out}"));
    let (again, out) = f.build(&files, r.clone());
    assert_eq!(again.as_ref().ok(), Some(&first), "{out}");
    assert_eq!(out.matches(" ---> Using cache").count(), 9, "{out}");

    // The RUN step's layer goes behind the store's back: that step runs
    // again (and, with the same layer and the same time, makes the same
    // image, so that the steps after it are cached again).
    let layers = f.store.inspect(&first).unwrap()["RootFS"]["Layers"]
        .as_array()
        .unwrap()
        .clone();
    let run_layer = layers.last().unwrap().as_str().unwrap().to_string();
    std::fs::remove_dir_all(f.snapshots.path(&run_layer).unwrap()).unwrap();
    let (remade, out) = f.build(&files, r.clone());
    let remade = remade.unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert_eq!(
        out.matches(" ---> Using cache").count(),
        8,
        "every step but the RUN cached: {out}"
    );
    assert!(out.contains("hello from RUN"), "{out}");
    assert_eq!(
        f.file(&remade, "/app/made.txt").unwrap(),
        b"hello from RUN\n"
    );

    // The image removed, gc deletes its layers and the cache entries that
    // name them: a rebuild makes every layer again, and works.
    f.store.remove("demo:base", &f.snapshots, &[]).unwrap();
    let (fresh, out) = f.build(&files, r);
    let fresh = fresh.unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert!(out.contains("hello from RUN"), "the RUN ran again: {out}");
    assert_eq!(f.file(&fresh, "/app/a.txt").unwrap(), b"A\n");
    assert_eq!(
        f.file(&fresh, "/app/made.txt").unwrap(),
        b"hello from RUN\n"
    );
}
