//! `tandem demo`: a guided tour a newcomer can run in seconds. Two devices with their own
//! homes and folders in a temp directory sync over loopback QUIC with the real binary
//! (`serve` on one, `sync` on the other); then both edit the same file while apart and the
//! conflict copy is listed. Everything is left in place to look at.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use tandem_proto::model::{FolderId, FolderMode};

use crate::cli::conflicts::folder_conflicts;
use crate::config::{Config, PeerConfig};
use crate::home::Home;
use crate::identity::Identity;

/// One demo device.
struct DemoDevice {
    name: &'static str,
    home: Home,
    folder: PathBuf,
    listen: String,
}

impl DemoDevice {
    fn command(&self) -> anyhow::Result<Command> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("--home").arg(self.home.dir()).env_remove("RUST_LOG");
        Ok(cmd)
    }

    fn write(&self, rel: &str, data: &[u8]) -> anyhow::Result<()> {
        let path = self.folder.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))
    }

    fn serve(&self) -> anyhow::Result<Child> {
        let mut cmd = self.command()?;
        cmd.args(["serve", "--log-level", "error"]).stdout(Stdio::null()).stderr(Stdio::null());
        Ok(cmd.spawn()?)
    }

    fn sync(&self) -> anyhow::Result<String> {
        let out =
            self.command()?.args(["sync", "--timeout", "60", "--log-level", "error"]).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if !out.status.success() {
            bail!("{} could not sync: {stderr}", self.name);
        }
        Ok(stderr)
    }

    fn listing(&self) -> anyhow::Result<String> {
        let mut names = Vec::new();
        list(&self.folder, &self.folder, &mut names)?;
        names.sort();
        Ok(names.join("  "))
    }
}

fn list(root: &Path, dir: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let rel = path.strip_prefix(root)?.display().to_string();
        if rel.starts_with(".tandem") {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            out.push(format!("{rel}/"));
            list(root, &path, out)?;
        } else if meta.file_type().is_symlink() {
            out.push(format!("{rel} -> {}", std::fs::read_link(&path)?.display()));
        } else {
            out.push(rel);
        }
    }
    Ok(())
}

/// Stops a daemon with SIGTERM (a clean shutdown), falling back to SIGKILL.
fn stop(mut child: Child) {
    let pid = rustix::process::Pid::from_child(&child);
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    for _ in 0..50 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(super) fn demo() -> anyhow::Result<()> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let root = std::env::temp_dir().join(format!("tandem-demo-{}-{nanos}", std::process::id()));
    println!("tandem demo: two devices, alpha and beta, in {}\n", root.display());
    let alpha = setup(&root, "alpha")?;
    let beta = setup(&root, "beta")?;
    pair(&alpha, &beta)?;
    first_sync(&alpha, &beta)?;
    conflict(&alpha, &beta)?;
    println!("\nEverything is left in {} — look around, then delete it.", root.display());
    println!("Try: TANDEM_HOME={} tandem ls demo", beta.home.dir().display());
    Ok(())
}

fn setup(root: &Path, name: &'static str) -> anyhow::Result<DemoDevice> {
    let home = Home::new(&root.join(name).join("home"))?;
    let folder = root.join(name).join("demo");
    std::fs::create_dir_all(&folder)?;
    let identity = Identity::create(&home)?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let mut config = Config::new(name.to_string(), listen.clone());
    config.device.rescan_secs = 1;
    config.add_folder(FolderId::new("demo")?, &folder, FolderMode::SendReceive)?;
    config.save(&home)?;
    println!(
        "1. {name}: `tandem init` made device {} (listening on {listen})",
        identity.device_id()
    );
    Ok(DemoDevice { name, home, folder: folder.canonicalize()?, listen })
}

fn pair(alpha: &DemoDevice, beta: &DemoDevice) -> anyhow::Result<()> {
    let demo = FolderId::new("demo")?;
    for (me, other) in [(alpha, beta), (beta, alpha)] {
        let other_id = Identity::load(&other.home)?.device_id();
        let own_id = Identity::load(&me.home)?.device_id();
        let mut config = Config::load(&me.home)?;
        let peer =
            PeerConfig { id: other_id, addr: other.listen.clone(), name: Some(other.name.into()) };
        config.add_peer(peer, own_id)?;
        config.share_folder(&demo, other_id)?;
        config.save(&me.home)?;
    }
    println!(
        "2. each trusts the other (`tandem peer add`) and shares folder \"demo\" (`tandem folder add … --share`)"
    );
    Ok(())
}

fn first_sync(alpha: &DemoDevice, beta: &DemoDevice) -> anyhow::Result<()> {
    alpha.write("notes.txt", b"shopping: milk, bread\n")?;
    let photo: Vec<u8> =
        (0..256 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    alpha.write("photos/cat.jpg", &photo)?;
    std::os::unix::fs::symlink("photos/cat.jpg", alpha.folder.join("latest.jpg"))?;
    println!("3. alpha writes: {}", alpha.listing()?);
    let server = alpha.serve()?;
    let summary = beta.sync();
    stop(server);
    println!("4. alpha runs `tandem serve`, beta runs `tandem sync`:\n   beta: {}", summary?);
    println!("   beta now has: {}", beta.listing()?);
    Ok(())
}

fn conflict(alpha: &DemoDevice, beta: &DemoDevice) -> anyhow::Result<()> {
    alpha.write("notes.txt", b"shopping: milk, bread, coffee\n")?;
    std::thread::sleep(Duration::from_millis(1100));
    beta.write("notes.txt", b"shopping: milk, bread, tea\n")?;
    println!("5. while apart, alpha adds coffee and beta (a second later) adds tea to notes.txt");
    let server = alpha.serve()?;
    let summary = beta.sync();
    std::thread::sleep(Duration::from_millis(500));
    stop(server);
    summary?;
    println!(
        "6. they sync again: the newer edit keeps the name, the other is kept as a conflict copy everywhere"
    );
    for device in [alpha, beta] {
        let cfg = Config::load(&device.home)?;
        let folder = cfg.folder(&FolderId::new("demo")?)?;
        let rows = folder_conflicts(folder, None)?;
        println!("   `tandem conflicts` on {}:", device.name);
        for row in rows {
            let content =
                std::fs::read_to_string(device.folder.join(&row.path)).unwrap_or_default();
            println!(
                "     {} (copy of {}, by {}): {}",
                row.path,
                row.original,
                row.device,
                content.trim()
            );
        }
        let kept = std::fs::read_to_string(device.folder.join("notes.txt")).unwrap_or_default();
        println!("     notes.txt: {}", kept.trim());
    }
    println!(
        "7. resolve it by keeping what you want and deleting the copy; the deletion syncs like any edit"
    );
    Ok(())
}
