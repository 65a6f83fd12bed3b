//! The OCI runtime-spec `config.json` of a container, built from the image config and the
//! user's run options.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use oci_spec::runtime::{
    LinuxIdMappingBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, Mount, MountBuilder,
    PosixRlimit, PosixRlimitBuilder, PosixRlimitType, Spec, User, UserBuilder,
};

use super::lifecycle::RunOptions;
use super::volume::ResolvedMount;
use super::{Error, ImageSpec, Result};

/// The hostname of a container without `--hostname`.
pub const HOSTNAME: &str = "strata";

/// Build the runtime spec for `image` run with `opts`, root file system at `rootfs`.
pub fn build(
    image: &ImageSpec,
    opts: &RunOptions,
    rootfs: &Path,
    mounts: &[ResolvedMount],
    netns: Option<&Path>,
) -> Result<Spec> {
    let cfg = image.config.config().clone().unwrap_or_default();
    let mut spec = Spec::default();

    let args = command_line(
        cfg.entrypoint().as_deref(),
        cfg.cmd().as_deref(),
        opts.entrypoint.as_deref(),
        &opts.cmd,
    )?;
    // docker's rule: an image without PATH (scratch-built ones) gets the default one.
    let mut env: Vec<String> = cfg.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(
            0,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    for e in &opts.env {
        merge_env(&mut env, e);
    }
    if opts.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    let cwd = opts
        .workdir
        .clone()
        .or_else(|| cfg.working_dir().clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    let user_name = opts
        .user
        .clone()
        .or_else(|| cfg.user().clone().filter(|u| !u.is_empty()));
    let user = match user_name {
        Some(u) => resolve_user(&u, &image.lower_dirs)?,
        None => User::default(),
    };

    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(args));
    process.set_env(Some(env));
    process.set_cwd(cwd.into());
    process.set_capabilities(Some(docker_capabilities(user.uid() == 0)?));
    process.set_user(user);
    process.set_terminal(Some(opts.tty));
    process.set_no_new_privileges(Some(true));
    process.set_rlimits(Some(clamp_rlimits(
        process.rlimits().clone().unwrap_or_default(),
    )));
    spec.set_process(Some(process));

    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(rootfs.to_path_buf());
    root.set_readonly(Some(opts.read_only));
    spec.set_root(Some(root));
    spec.set_hostname(Some(
        opts.hostname.clone().unwrap_or_else(|| HOSTNAME.into()),
    ));

    // In the store's rootless namespace (see `userns`) strata is root there but the
    // container must still be set up as rootless, sharing that namespace's full mapping.
    let shared_userns = super::userns::joined();
    let rootless = !rustix::process::geteuid().is_root() || shared_userns;
    let mut all_mounts: Vec<Mount> = if rootless {
        oci_spec::runtime::get_rootless_mounts()
    } else {
        spec.mounts().clone().unwrap_or_default()
    };
    for m in mounts {
        let mut options = vec!["rbind".to_string(), "rprivate".to_string()];
        options.push(if m.read_only { "ro" } else { "rw" }.into());
        all_mounts.push(
            MountBuilder::default()
                .destination(&m.target)
                .typ("bind")
                .source(&m.source)
                .options(options)
                .build()?,
        );
    }
    spec.set_mounts(Some(all_mounts));

    let mut linux = spec.linux().clone().unwrap_or_default();
    let ns: Vec<_> = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| {
            let t = n.typ();
            (opts.network.private_namespace() || t != LinuxNamespaceType::Network)
                && t != LinuxNamespaceType::Cgroup
        })
        .map(|n| match netns {
            // The bridge network's namespace, made and kept by strata, joined by path.
            Some(p) if n.typ() == LinuxNamespaceType::Network => {
                let mut n = n;
                n.set_path(Some(p.to_path_buf()));
                n
            }
            _ => n,
        })
        .collect();
    let mut ns = ns;
    if rootless && !shared_userns {
        // A single mapping (container root = the calling user), as podman does without subuids.
        ns.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::User)
                .build()?,
        );
        let map = |host: u32| {
            LinuxIdMappingBuilder::default()
                .container_id(0u32)
                .host_id(host)
                .size(1u32)
                .build()
        };
        linux.set_uid_mappings(Some(vec![map(rustix::process::geteuid().as_raw())?]));
        linux.set_gid_mappings(Some(vec![map(rustix::process::getegid().as_raw())?]));
    }
    if rootless {
        linux.set_resources(None);
    }
    linux.set_namespaces(Some(ns));
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// Docker's default capabilities (runc's own default is only three, without CHOWN or
/// SETUID); a non-root process keeps them only in its bounding set, as docker does.
fn docker_capabilities(root: bool) -> Result<oci_spec::runtime::LinuxCapabilities> {
    use oci_spec::runtime::{Capability as C, LinuxCapabilitiesBuilder};
    let all: oci_spec::runtime::Capabilities = [
        C::Chown,
        C::DacOverride,
        C::Fsetid,
        C::Fowner,
        C::Mknod,
        C::NetRaw,
        C::Setgid,
        C::Setuid,
        C::Setfcap,
        C::Setpcap,
        C::NetBindService,
        C::SysChroot,
        C::Kill,
        C::AuditWrite,
    ]
    .into_iter()
    .collect();
    let active = if root {
        all.clone()
    } else {
        Default::default()
    };
    Ok(LinuxCapabilitiesBuilder::default()
        .bounding(all)
        .effective(active.clone())
        .permitted(active)
        .inheritable(oci_spec::runtime::Capabilities::default())
        .ambient(oci_spec::runtime::Capabilities::default())
        .build()?)
}

/// Docker's rule: `--entrypoint` replaces the image entrypoint and drops its cmd; CMD args
/// replace the image cmd.
pub fn command_line(
    image_entrypoint: Option<&[String]>,
    image_cmd: Option<&[String]>,
    entrypoint: Option<&str>,
    cmd: &[String],
) -> Result<Vec<String>> {
    let mut args: Vec<String> = match entrypoint {
        Some(e) => vec![e.to_string()],
        None => image_entrypoint.map(<[String]>::to_vec).unwrap_or_default(),
    };
    if !cmd.is_empty() {
        args.extend(cmd.iter().cloned());
    } else if entrypoint.is_none() {
        args.extend(image_cmd.map(<[String]>::to_vec).unwrap_or_default());
    }
    if args.is_empty() {
        return Err(Error::Invalid(
            "no command given and the image has none".into(),
        ));
    }
    Ok(args)
}

/// Set or replace `K=V` in `env`; a bare `K` takes the value from strata's environment.
fn merge_env(env: &mut Vec<String>, entry: &str) {
    let (key, entry) = match entry.split_once('=') {
        Some((k, _)) => (k.to_string(), entry.to_string()),
        None => match std::env::var(entry) {
            Ok(v) => (entry.to_string(), format!("{entry}={v}")),
            Err(_) => return,
        },
    };
    env.retain(|e| e.split_once('=').map(|(k, _)| k) != Some(key.as_str()));
    env.push(entry);
}

/// Resolve `user[:group]` (names or numbers) against the image's /etc/passwd and /etc/group.
pub fn resolve_user(spec: &str, layers: &[std::path::PathBuf]) -> Result<User> {
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_top(layers, "etc/passwd");
    let group = read_top(layers, "etc/group");
    let (uid, mut gid) = match u.parse::<u32>() {
        Ok(n) => {
            let gid = lookup(&passwd, |f| f[2] == u).and_then(|f| f[3].parse().ok());
            (n, gid.unwrap_or(0))
        }
        Err(_) => {
            let f = lookup(&passwd, |f| f[0] == u).ok_or_else(|| {
                Error::Invalid(format!(
                    "unable to find user {u}: no matching entries in passwd file"
                ))
            })?;
            let uid = f[2]
                .parse()
                .map_err(|_| Error::Invalid(format!("bad uid for {u} in passwd")))?;
            (uid, f[3].parse().unwrap_or(0))
        }
    };
    if let Some(g) = g {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup(&group, |f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| Error::Invalid(format!("unable to find group {g}")))?,
        };
    }
    Ok(UserBuilder::default().uid(uid).gid(gid).build()?)
}

/// `rel` from the topmost layer that has it as a regular file (layers bottom first): read
/// from the layers so `create` need not mount the union.
fn read_top(layers: &[std::path::PathBuf], rel: &str) -> String {
    layers
        .iter()
        .rev()
        .find(|l| {
            std::fs::symlink_metadata(l.join(rel))
                .is_ok_and(|m| m.file_type().is_file() || m.file_type().is_char_device())
        })
        .and_then(|l| {
            // A lazily pulled layer's file may still be waiting for its bytes: fetch them.
            match crate::registry::lazy_pull::read_file(l, rel) {
                Ok(Some(bytes)) => String::from_utf8(bytes).ok(),
                Ok(None) => std::fs::read_to_string(l.join(rel)).ok(),
                Err(e) => {
                    tracing::warn!("{e}");
                    None
                }
            }
        })
        .unwrap_or_default()
}

/// The first line of a colon file with at least 4 fields matching `pred`.
fn lookup(file: &str, pred: impl Fn(&[&str]) -> bool) -> Option<Vec<&str>> {
    file.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && pred(f))
}

/// Rlimits no higher than strata's own hard limits: without CAP_SYS_RESOURCE a runtime
/// cannot raise them and would fail the start.
fn clamp_rlimits(limits: Vec<PosixRlimit>) -> Vec<PosixRlimit> {
    limits
        .into_iter()
        .map(|mut l| {
            let res = match l.typ() {
                PosixRlimitType::RlimitNofile => Some(rustix::process::Resource::Nofile),
                PosixRlimitType::RlimitNproc => Some(rustix::process::Resource::Nproc),
                _ => None,
            };
            if let Some(r) = res {
                if let Some(max) = rustix::process::getrlimit(r).maximum {
                    if let Ok(c) = PosixRlimitBuilder::default()
                        .typ(l.typ())
                        .hard(l.hard().min(max))
                        .soft(l.soft().min(max))
                        .build()
                    {
                        l = c;
                    }
                }
            }
            l
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn docker_command_rules() {
        let ep = s(&["/entry"]);
        let cmd = s(&["default"]);
        assert_eq!(
            command_line(Some(&ep), Some(&cmd), None, &[]).unwrap(),
            s(&["/entry", "default"])
        );
        assert_eq!(
            command_line(Some(&ep), Some(&cmd), None, &s(&["x"])).unwrap(),
            s(&["/entry", "x"])
        );
        assert_eq!(
            command_line(Some(&ep), Some(&cmd), Some("/sh"), &[]).unwrap(),
            s(&["/sh"])
        );
        assert!(command_line(None, None, None, &[]).is_err());
    }

    #[test]
    fn env_merge_replaces() {
        let mut env = s(&["A=1", "B=2"]);
        merge_env(&mut env, "A=3");
        assert_eq!(env, s(&["B=2", "A=3"]));
    }

    #[test]
    fn user_from_passwd() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nbob:x:1000:1001::/h:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(d.path().join("etc/group"), "staff:x:50:\n").unwrap();
        let u = resolve_user("bob", &[d.path().to_path_buf()]).unwrap();
        assert_eq!((u.uid(), u.gid()), (1000, 1001));
        let u = resolve_user("bob:staff", &[d.path().to_path_buf()]).unwrap();
        assert_eq!((u.uid(), u.gid()), (1000, 50));
        let u = resolve_user("77:78", &[d.path().to_path_buf()]).unwrap();
        assert_eq!((u.uid(), u.gid()), (77, 78));
        assert!(resolve_user("nobody", &[d.path().to_path_buf()]).is_err());
    }

    #[test]
    fn rlimits_are_clamped() {
        let max = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .maximum
            .unwrap_or(u64::MAX);
        let l = PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .hard(u64::MAX)
            .soft(u64::MAX)
            .build()
            .unwrap();
        let out = clamp_rlimits(vec![l]);
        assert_eq!(out[0].hard(), max);
    }
}
