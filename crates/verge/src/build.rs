//! Running a component's build command, with a progress display, a time
//! limit, and the build's own output shown when it fails.
//!
//! The command runs with `sh -c` in its working directory, in its own
//! process group so a timeout kills the whole tree (cargo, rustc, ...). The
//! build inherits the user's environment: it is the user's own tool, not a
//! guest.

use std::collections::VecDeque;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use verge_manifest::BuildSpec;

/// Lines of build output kept to show on failure.
const TAIL_LINES: usize = 40;

/// A step of work shown as a spinner on a terminal, or as log lines otherwise.
pub(crate) struct Step {
    bar: Option<ProgressBar>,
    message: String,
    started: Instant,
}

impl Step {
    pub(crate) fn start(message: String) -> Self {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            bar.set_message(message.clone());
            bar
        });
        if bar.is_none() {
            tracing::info!("{message}");
        }
        Self {
            bar,
            message,
            started: Instant::now(),
        }
    }

    /// Shows the latest line of output next to the step.
    pub(crate) fn detail(&self, line: &str) {
        if let Some(bar) = &self.bar {
            let line: String = line.chars().take(80).collect();
            bar.set_message(format!("{}: {line}", self.message));
        }
    }

    pub(crate) fn done(self) {
        let text = format!("{} done in {:.1?}", self.message, self.started.elapsed());
        match self.bar {
            Some(bar) => {
                bar.set_style(
                    ProgressStyle::with_template("✓ {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.finish_with_message(text);
            }
            None => tracing::info!("{text}"),
        }
    }

    pub(crate) fn fail(self) {
        if let Some(bar) = self.bar {
            bar.set_style(
                ProgressStyle::with_template("✗ {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.abandon_with_message(format!("{} failed", self.message));
        }
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// A build that did not succeed, with what the user needs to fix it.
#[derive(Debug)]
pub(crate) struct BuildError {
    component: String,
    command: String,
    workdir: String,
    outcome: String,
    tail: Vec<String>,
}

impl std::error::Error for BuildError {}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "build of component `{}` {}",
            self.component, self.outcome
        )?;
        writeln!(f, "  command: {}", self.command)?;
        write!(f, "  in: {}", self.workdir)?;
        if !self.tail.is_empty() {
            write!(f, "\n  last {} line(s) of output:", self.tail.len())?;
            for line in &self.tail {
                write!(f, "\n    | {line}")?;
            }
        }
        Ok(())
    }
}

/// Runs every build command of `manifest` (unless `build` is false), then
/// checks that every component file exists.
pub(crate) fn prepare(
    manifest: &verge_manifest::Manifest,
    build: bool,
) -> Result<(), crate::Failure> {
    if build {
        for c in &manifest.components {
            if let Some(spec) = &c.build {
                run(&c.name, spec).map_err(crate::Failure::input)?;
            }
        }
    }
    manifest.check_sources().map_err(crate::Failure::input)
}

/// Runs `spec` for `component`, blocking until it finishes or times out.
pub(crate) fn run(component: &str, spec: &BuildSpec) -> Result<(), BuildError> {
    let step = Step::start(format!("Building {component} (`{}`)", spec.command));
    let error = |outcome: String, tail: Vec<String>| BuildError {
        component: component.to_string(),
        command: spec.command.clone(),
        workdir: spec.workdir.display().to_string(),
        outcome,
        tail,
    };
    if !spec.workdir.is_dir() {
        step.fail();
        return Err(error(
            "cannot start: the working directory does not exist".into(),
            vec![],
        ));
    }
    let mut child = match Command::new("sh")
        .arg("-c")
        .arg(&spec.command)
        .current_dir(&spec.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            step.fail();
            return Err(error(format!("could not start: {e}"), vec![]));
        }
    };

    let (lines_tx, lines) = mpsc::channel::<String>();
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|stream| {
        let tx = lines_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        })
    })
    .collect();
    drop(lines_tx);

    let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES);
    let deadline = Instant::now() + spec.timeout;
    let status: Option<ExitStatus> = loop {
        while let Ok(line) = lines.try_recv() {
            step.detail(&line);
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                kill_group(child.id());
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => break None,
        }
    };
    // Anything the build left running in its process group goes too: a
    // leftover holding the output pipes would otherwise block us forever.
    kill_group(child.id());
    let drain_until = Instant::now() + Duration::from_secs(2);
    while let Some(left) = drain_until.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) => {
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            Err(_) => break,
        }
    }
    // Reader threads end on their own when the pipes close; never wait for
    // a process that escaped the group.
    drop(readers);
    let tail: Vec<String> = tail.into();
    match status {
        Some(s) if s.success() => {
            step.done();
            Ok(())
        }
        Some(s) => {
            let elapsed = step.elapsed();
            step.fail();
            Err(error(format!("failed ({s}) after {elapsed:.1?}"), tail))
        }
        None => {
            step.fail();
            Err(error(
                format!("was stopped: it ran longer than {:?}", spec.timeout),
                tail,
            ))
        }
    }
}

fn kill_group(pid: u32) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}
