//! The one place that decides which container state may follow which.

use berth_proto::records::ContainerState;

/// A container's state with the checks that guard its transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub ContainerState);

impl Status {
    /// True if a report moving the container to `to` is legal now.
    pub fn can_move_to(self, to: ContainerState) -> bool {
        use ContainerState::*;
        matches!(
            (self.0, to),
            (_, Dead)
                | (Pending, Created | Running | Exited)
                | (Created, Running | Exited)
                | (Running, Paused | Exited)
                | (Paused, Running | Exited)
                | (Exited, Running)
                // A lost node came back and reports what it holds.
                | (Dead, Created | Running | Paused | Exited)
        )
    }

    /// Why the container cannot be started now, as Docker says it.
    pub fn check_start(self, name: &str) -> Result<(), String> {
        match self.0 {
            ContainerState::Created | ContainerState::Exited | ContainerState::Pending => Ok(()),
            ContainerState::Running => Ok(()),
            ContainerState::Paused => Err(format!(
                "cannot start a paused container {name}, try unpause instead"
            )),
            _ => Err(format!(
                "container {name} is {} and cannot be started",
                self.name()
            )),
        }
    }

    /// Why a signal cannot be sent to the container now.
    pub fn check_kill(self, name: &str) -> Result<(), String> {
        if self.is_running() {
            Ok(())
        } else {
            Err(format!(
                "cannot kill container: {name}: container {name} is not running"
            ))
        }
    }

    /// True while the container holds a process on its node.
    pub fn is_running(self) -> bool {
        matches!(self.0, ContainerState::Running | ContainerState::Paused)
    }

    /// True once the container will not run again by itself.
    pub fn is_finished(self) -> bool {
        matches!(self.0, ContainerState::Exited | ContainerState::Dead)
    }

    /// The lower-case name the CLI shows.
    pub fn name(self) -> &'static str {
        state_name(self.0)
    }
}

/// The lower-case name of a state, as the CLI and agents spell it.
pub fn state_name(s: ContainerState) -> &'static str {
    match s {
        ContainerState::Unspecified => "unknown",
        ContainerState::Pending => "pending",
        ContainerState::Created => "created",
        ContainerState::Running => "running",
        ContainerState::Paused => "paused",
        ContainerState::Exited => "exited",
        ContainerState::Dead => "dead",
    }
}

/// Parses an agent's spelling of a state.
pub fn parse_state(s: &str) -> Option<ContainerState> {
    Some(match s {
        "pending" => ContainerState::Pending,
        "created" => ContainerState::Created,
        "running" => ContainerState::Running,
        "paused" => ContainerState::Paused,
        "exited" => ContainerState::Exited,
        "dead" => ContainerState::Dead,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ContainerState::*;

    #[test]
    fn lifecycle_moves_forward_only() {
        assert!(Status(Pending).can_move_to(Created));
        assert!(Status(Created).can_move_to(Running));
        assert!(Status(Running).can_move_to(Exited));
        assert!(!Status(Exited).can_move_to(Created));
        assert!(!Status(Running).can_move_to(Created));
        assert!(!Status(Created).can_move_to(Paused));
        assert!(Status(Running).can_move_to(Dead));
        assert!(Status(Dead).can_move_to(Running));
        assert!(!Status(Dead).can_move_to(Pending));
    }

    #[test]
    fn start_and_kill_say_what_docker_says() {
        assert!(Status(Exited).check_start("web").is_ok());
        assert!(Status(Paused)
            .check_start("web")
            .unwrap_err()
            .contains("unpause"));
        assert!(Status(Exited)
            .check_kill("web")
            .unwrap_err()
            .contains("container web is not running"));
        assert!(Status(Running).check_kill("web").is_ok());
    }

    #[test]
    fn names_parse_back() {
        for s in [Pending, Created, Running, Paused, Exited, Dead] {
            assert_eq!(parse_state(state_name(s)), Some(s));
        }
    }
}
